#!/usr/bin/env bash
# Stops a TPU VM (its disk and setup are kept; start it again with gcloud compute tpus tpu-vm
# start). Spot TPUs cannot be restarted: delete them instead. See tpu/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu/stop.sh --name=NAME --zone=ZONE [flags]

Stops the TPU VM NAME (gcloud compute tpus tpu-vm stop). A node made by create.sh --queued has
the same name as its queued resource, so the same --name stops it, where the TPU type allows it.

  --name=NAME          TPU_NAME            required
  --zone=ZONE          TPU_ZONE            required
  --project=PROJECT    TPU_PROJECT         default: gcloud's configured project
  --dry-run            TPU_DRY_RUN=1       print the gcloud command, run nothing
  --help
USAGE
}

while (($#)); do
  case $1 in
    --help | -h)
      usage
      exit 0
      ;;
    *) parse_common_flag "$@" || die "unknown flag: $1 (see $SCRIPT_NAME --help)" ;;
  esac
  shift "$TAKEN"
done

require --name TPU_NAME
require --zone TPU_ZONE
location_flags
run_gcloud compute tpus tpu-vm stop "$TPU_NAME" "${LOCATION_FLAGS[@]}"
