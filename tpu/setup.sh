#!/usr/bin/env bash
# Installs the project on every worker of a TPU VM: syncs this checkout, makes a virtualenv,
# installs jax[tpu] and the project at the versions CI tests (constraints.txt). See tpu/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# jax, flax, numpy, transformers... need Python >= 3.11; the TPU images ship 3.10.
TPU_PYTHON=${TPU_PYTHON:-python3.11}
TPU_SYNC=${TPU_SYNC:-1}

usage() {
  cat <<EOF
Usage: tpu/setup.sh --name=NAME --zone=ZONE [flags]

On every worker (--worker=all): copies this checkout to ~/$TPU_REMOTE_DIR (see run.sh), installs
$TPU_PYTHON (apt) if missing, creates ~/$TPU_REMOTE_DIR/.venv and runs
  pip install -c constraints.txt "jax[tpu]==<jax pinned in constraints.txt>" -e .
then starts jax.distributed on every worker and prints its local / global device counts
("jax VERSION process 0 devices 8 / 8" on a v5litepod-8). Safe to re-run (e.g. after
constraints.txt changes).

  --name=NAME          TPU_NAME            required
  --zone=ZONE          TPU_ZONE            required
  --project=PROJECT    TPU_PROJECT         default: gcloud's configured project
  --worker=WORKERS     TPU_WORKER          default: all
  --remote-dir=DIR     TPU_REMOTE_DIR      default: irl_jax (relative to the remote home)
  --python=PYTHON      TPU_PYTHON          default: python3.11
  --no-sync            TPU_SYNC=0          install what is already on the workers
  --dry-run            TPU_DRY_RUN=1       print the gcloud commands, run nothing
  --help
EOF
}

while (($#)); do
  case $1 in
    --help | -h)
      usage
      exit 0
      ;;
    --worker | --worker=*) take_value TPU_WORKER "$@" ;;
    --remote-dir | --remote-dir=*) take_value TPU_REMOTE_DIR "$@" ;;
    --python | --python=*) take_value TPU_PYTHON "$@" ;;
    --no-sync) TPU_SYNC=0 TAKEN=1 ;;
    *) parse_common_flag "$@" || die "unknown flag: $1 (see $SCRIPT_NAME --help)" ;;
  esac
  shift "$TAKEN"
done

require --name TPU_NAME
require --zone TPU_ZONE

# jax[tpu] pulls jaxlib and libtpu matching its own version, so pinning jax pins the TPU stack;
# that version is read from the one constraints file CI installs with.
jax_version=$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' "$REPO_ROOT/constraints.txt")
[[ -n $jax_version ]] || die "no 'jax==VERSION' line in $REPO_ROOT/constraints.txt"

if [[ $TPU_SYNC == 1 ]]; then
  sync_checkout
fi

dir=$(quote_arg "$TPU_REMOTE_DIR")
python=$(quote_arg "$TPU_PYTHON")
apt="sudo apt-get -o DPkg::Lock::Timeout=600"
# One step per line, joined with && so the first failure stops that worker (and gcloud fails).
# If the venv cannot be made (no $TPU_PYTHON, or no ensurepip: Ubuntu splits it into
# $TPU_PYTHON-venv), install both from apt and try again; the apt lock timeout waits out the
# unattended-upgrades that hold it on a freshly booted VM.
steps=(
  "cd $dir"
  "{ $python -m venv .venv || { echo installing $python from apt; $apt update && $apt install -y $python $python-venv && $python -m venv .venv; }; }"
  ". .venv/bin/activate"
  "python -m pip install --upgrade pip"
  "python -m pip install -c constraints.txt $(quote_arg "jax[tpu]==$jax_version") -e ."
  # Every worker joins jax.distributed (no arguments needed on Cloud TPU), as an experiment will.
  "python -c 'import jax; jax.distributed.initialize(); print(\"jax\", jax.__version__, \"process\", jax.process_index(), \"devices\", jax.local_device_count(), \"/\", jax.device_count())'"
)
remote=""
for step in "${steps[@]}"; do
  remote+="${remote:+ && }$step"
done
tpu_ssh "$remote"
