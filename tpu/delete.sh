#!/usr/bin/env bash
# Deletes a TPU VM, or with --queued a queued resource and its node: what ends the billing.
# See tpu/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_QUEUED=${TPU_QUEUED:-0}
TPU_YES=${TPU_YES:-0}

usage() {
  cat <<USAGE
Usage: tpu/delete.sh --name=NAME --zone=ZONE [flags]

Deletes the TPU VM NAME (gcloud compute tpus tpu-vm delete) or, with --queued, the queued
resource NAME together with its node (gcloud compute tpus queued-resources delete --force).
Everything on the workers (checkout, venv, runs/) goes with it: fetch logs and copy results first.

  --name=NAME          TPU_NAME            required
  --zone=ZONE          TPU_ZONE            required
  --project=PROJECT    TPU_PROJECT         default: gcloud's configured project
  --queued             TPU_QUEUED=1        delete the queued resource made by create.sh --queued
  --yes                TPU_YES=1           do not ask for confirmation (gcloud --quiet)
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
    --queued) TPU_QUEUED=1 TAKEN=1 ;;
    --yes) TPU_YES=1 TAKEN=1 ;;
    *) parse_common_flag "$@" || die "unknown flag: $1 (see $SCRIPT_NAME --help)" ;;
  esac
  shift "$TAKEN"
done

require --name TPU_NAME
require --zone TPU_ZONE
location_flags
if [[ $TPU_QUEUED == 1 ]]; then
  # --force: also delete the node the request created (without it gcloud refuses while one exists).
  cmd=(compute tpus queued-resources delete "$TPU_NAME" "${LOCATION_FLAGS[@]}" --force)
else
  cmd=(compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION_FLAGS[@]}")
fi
if [[ $TPU_YES == 1 ]]; then
  cmd+=(--quiet)
fi
run_gcloud "${cmd[@]}"
