#!/usr/bin/env bash
# Creates a Cloud TPU VM, directly or as a queued resource. See tpu/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-v5litepod-8}
TPU_VERSION=${TPU_VERSION:-}
TPU_SPOT=${TPU_SPOT:-0}
TPU_QUEUED=${TPU_QUEUED:-0}

usage() {
  cat <<EOF
Usage: tpu/create.sh --name=NAME --zone=ZONE [flags] [-- EXTRA_GCLOUD_FLAGS...]

Creates a TPU VM (gcloud compute tpus tpu-vm create) or, with --queued, a queued resource
whose node has the same name (gcloud compute tpus queued-resources create).

  --name=NAME               TPU_NAME              required
  --zone=ZONE               TPU_ZONE              required, e.g. us-west4-a (v5e), us-central2-b (v4)
  --project=PROJECT         TPU_PROJECT           default: gcloud's configured project
  --accelerator-type=TYPE   TPU_ACCELERATOR_TYPE  default: v5litepod-8 (e.g. v4-32, v5p-64, v6e-8)
  --version=RUNTIME         TPU_VERSION           default by generation: v2-alpha-tpuv5-lite (v5e),
                                                  v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e),
                                                  tpu-ubuntu2204-base (v2, v3, v4)
  --spot                    TPU_SPOT=1            a Spot TPU (cheaper, can be preempted)
  --queued                  TPU_QUEUED=1          request a queued resource (waits for capacity)
  --dry-run                 TPU_DRY_RUN=1         print the gcloud command, run nothing
  --help

Anything after -- is appended to the gcloud command (e.g. -- --reserved, -- --network=NET).
EOF
}

# The runtime image Google recommends for JAX on each TPU generation.
default_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime version for accelerator type '$1'; pass --version" ;;
  esac
}

extra=()
while (($#)); do
  case $1 in
    --help | -h)
      usage
      exit 0
      ;;
    --accelerator-type | --accelerator-type=*) take_value TPU_ACCELERATOR_TYPE "$@" ;;
    --version | --version=*) take_value TPU_VERSION "$@" ;;
    --spot) TPU_SPOT=1 TAKEN=1 ;;
    --queued) TPU_QUEUED=1 TAKEN=1 ;;
    --)
      shift
      extra=("$@")
      break
      ;;
    *) parse_common_flag "$@" || die "unknown flag: $1 (see $SCRIPT_NAME --help)" ;;
  esac
  shift "$TAKEN"
done

require --name TPU_NAME
require --zone TPU_ZONE
version=${TPU_VERSION:-$(default_version "$TPU_ACCELERATOR_TYPE")}
location_flags

if [[ $TPU_QUEUED == 1 ]]; then
  # The queued resource and the node it creates share the name, so the other scripts (which
  # address the node) and delete.sh --queued (which addresses the request) take the same --name.
  cmd=(compute tpus queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME"
    "${LOCATION_FLAGS[@]}" "--accelerator-type=$TPU_ACCELERATOR_TYPE"
    "--runtime-version=$version")
else
  cmd=(compute tpus tpu-vm create "$TPU_NAME" "${LOCATION_FLAGS[@]}"
    "--accelerator-type=$TPU_ACCELERATOR_TYPE" "--version=$version")
fi
if [[ $TPU_SPOT == 1 ]]; then
  cmd+=(--spot)
fi
# ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error in the bash 3.2 macOS ships.
run_gcloud "${cmd[@]}" ${extra[@]+"${extra[@]}"}
