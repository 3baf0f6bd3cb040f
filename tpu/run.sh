#!/usr/bin/env bash
# Syncs this checkout to every worker of a TPU VM and runs one command on all of them at once,
# or fetches the per-worker logs of an earlier run. See tpu/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_RUN_NAME=${TPU_RUN_NAME:-}
TPU_SYNC=${TPU_SYNC:-1}
TPU_DETACH=${TPU_DETACH:-0}
TPU_LOGS_DIR=${TPU_LOGS_DIR:-$REPO_ROOT/tpu_logs}

usage() {
  cat <<EOF
Usage: tpu/run.sh --name=NAME --zone=ZONE [flags] -- COMMAND [ARGS...]
       tpu/run.sh --name=NAME --zone=ZONE --fetch-logs [--run-name=RUN]

Run: copies this checkout to ~/$TPU_REMOTE_DIR on every worker (the files git sees: tracked ones,
with uncommitted edits, and untracked ones .gitignore allows; never .venv/ or runs/), then runs
COMMAND there on all workers at once, inside ~/$TPU_REMOTE_DIR/.venv (made by setup.sh). Each
worker appends the output to ~/$TPU_REMOTE_DIR/logs/RUN.log (logs/latest.log points to it).
In the foreground (default) the output of all workers streams here, mixed together, and this
script exits with gcloud's status; with --detach the command keeps running after ssh returns
(use it for long runs: a dropped connection would kill a foreground run).
COMMAND's arguments are quoted as given; set environment variables with: env VAR=VALUE COMMAND.

Fetch logs: copies each worker's RUN.log (default: the latest run) to
  LOGS_DIR/NAME/RUN/worker-<i>.log

  --name=NAME          TPU_NAME            required
  --zone=ZONE          TPU_ZONE            required
  --project=PROJECT    TPU_PROJECT         default: gcloud's configured project
  --worker=WORKERS     TPU_WORKER          default: all
  --remote-dir=DIR     TPU_REMOTE_DIR      default: irl_jax (relative to the remote home)
  --run-name=RUN       TPU_RUN_NAME        default: <config name>-<UTC time> (run),
                                           latest (--fetch-logs)
  --detach             TPU_DETACH=1        start the command in the background and return
  --no-sync            TPU_SYNC=0          run what is already on the workers
  --fetch-logs                             fetch logs instead of running
  --logs-dir=DIR       TPU_LOGS_DIR        default: tpu_logs in the checkout
  --dry-run            TPU_DRY_RUN=1       print the gcloud commands, run nothing
  --help

Example:
  tpu/run.sh --name=my-tpu --zone=us-west4-a -- \\
      python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
EOF
}

fetch_logs=0
command_args=()
while (($#)); do
  case $1 in
    --help | -h)
      usage
      exit 0
      ;;
    --worker | --worker=*) take_value TPU_WORKER "$@" ;;
    --remote-dir | --remote-dir=*) take_value TPU_REMOTE_DIR "$@" ;;
    --run-name | --run-name=*) take_value TPU_RUN_NAME "$@" ;;
    --logs-dir | --logs-dir=*) take_value TPU_LOGS_DIR "$@" ;;
    --detach) TPU_DETACH=1 TAKEN=1 ;;
    --no-sync) TPU_SYNC=0 TAKEN=1 ;;
    --fetch-logs) fetch_logs=1 TAKEN=1 ;;
    --)
      shift
      command_args=("$@")
      break
      ;;
    *) parse_common_flag "$@" || die "unknown flag: $1 (see $SCRIPT_NAME --help)" ;;
  esac
  shift "$TAKEN"
done

require --name TPU_NAME
require --zone TPU_ZONE
dir=$(quote_arg "$TPU_REMOTE_DIR")

# The run name becomes a file name here and on the workers: keep it to plain characters.
check_run_name() {
  [[ $1 =~ ^[A-Za-z0-9._-]+$ ]] || die "--run-name must match [A-Za-z0-9._-]+, got '$1'"
}

if [[ $fetch_logs == 1 ]]; then
  ((${#command_args[@]} == 0)) || die "--fetch-logs takes no command"
  run_name=${TPU_RUN_NAME:-latest}
  check_run_name "$run_name"
  out="$TPU_LOGS_DIR/$TPU_NAME/$run_name"
  if [[ $TPU_DRY_RUN != 1 ]]; then
    mkdir -p "$out"
    # Fetched logs are not source: keep git (and so the sync) away from them.
    [[ -e $TPU_LOGS_DIR/.gitignore ]] || echo '*' >"$TPU_LOGS_DIR/.gitignore"
  fi
  # gcloud writes each worker's output of the command to OUT/<worker>.log.
  tpu_ssh "cat $dir/logs/$run_name.log" "--output-directory=$out"
  if [[ $TPU_DRY_RUN != 1 ]]; then
    for log in "$out"/[0-9]*.log; do
      if [[ -e $log ]]; then mv -f "$log" "$out/worker-$(basename "$log")"; fi
    done
    echo "logs in $out" >&2
  fi
  exit 0
fi

((${#command_args[@]} > 0)) || die "no command to run; put it after --, e.g. -- python -m experiments.run --config=..."

if [[ -z $TPU_RUN_NAME ]]; then
  # Named after the experiment config (--config=experiments/configs/sft.py -> sft) and the time.
  # Both --config=PATH and --config PATH; a ":ARG" suffix on the path is not part of the name.
  config_name=run previous=""
  for arg in "${command_args[@]}"; do
    config_path=""
    if [[ $arg == --config=* ]]; then
      config_path=${arg#--config=}
    elif [[ $previous == --config ]]; then
      config_path=$arg
    fi
    if [[ -n $config_path ]]; then
      config_name=$(basename "${config_path%%:*}" .py)
    fi
    previous=$arg
  done
  TPU_RUN_NAME="$config_name-$(date -u +%Y%m%d-%H%M%S)"
fi
check_run_name "$TPU_RUN_NAME"
log="logs/$TPU_RUN_NAME.log"

if [[ $TPU_SYNC == 1 ]]; then
  sync_checkout
fi

setup="cd $dir && . .venv/bin/activate && mkdir -p logs && ln -sfn $TPU_RUN_NAME.log logs/latest.log && export PYTHONUNBUFFERED=1"
command_line=$(quote_command "${command_args[@]}")
if [[ $TPU_DETACH == 1 ]]; then
  # setsid + nohup + no terminal: the command outlives the ssh session that started it.
  tpu_ssh "$setup && (setsid nohup $command_line >> $log 2>&1 < /dev/null &) && echo started on \$(hostname), log: $dir/$log"
else
  tpu_ssh "$setup && set -o pipefail && $command_line 2>&1 | tee -a $log"
fi
