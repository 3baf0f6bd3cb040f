#!/usr/bin/env bash
# Shared settings and helpers for the tpu/*.sh scripts; sourced by them, never run.
#
# Every setting is a flag with an environment-variable fallback and a default:
# flag > environment variable > default. The flags every script understands:
#   --name=NAME        TPU_NAME        TPU VM (and queued resource) name    required
#   --zone=ZONE        TPU_ZONE        e.g. us-central2-b                    required
#   --project=PROJECT  TPU_PROJECT     Google Cloud project                  gcloud's default
#   --dry-run          TPU_DRY_RUN=1   print the gcloud commands, run nothing
#   --help             this script's usage
set -euo pipefail

# The checkout the scripts belong to: tpu/..
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_NAME=$(basename "$0")

TPU_NAME=${TPU_NAME:-}
TPU_ZONE=${TPU_ZONE:-}
TPU_PROJECT=${TPU_PROJECT:-}
TPU_DRY_RUN=${TPU_DRY_RUN:-0}
# Where the checkout lives on every worker: relative to the remote home directory, or absolute.
TPU_REMOTE_DIR=${TPU_REMOTE_DIR:-irl_jax}
# Which workers ssh/scp address: "all" for a whole pod slice, or e.g. "0" to debug one host.
TPU_WORKER=${TPU_WORKER:-all}

# The number of arguments the last take_value/parse_common_flag call consumed (for `shift`).
TAKEN=0

# Prints a one-line error and exits nonzero.
die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 2
}

# Quotes one argument for a POSIX shell, leaving plain words bare (what Python's shlex.quote does).
quote_arg() {
  local arg=$1
  if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$arg"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

# Quotes every argument and joins them with spaces: one line that a shell runs as the same argv.
quote_command() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote_arg "$arg")"
  done
  printf '%s' "$out"
}

# take_value VAR "$@": stores the value of the flag in $1 ("--flag=value" or "--flag value") in
# the variable named VAR and sets TAKEN to the number of arguments used.
take_value() {
  local var=$1
  shift
  if [[ $1 == *=* ]]; then
    printf -v "$var" '%s' "${1#*=}"
    TAKEN=1
  elif (($# >= 2)) && [[ $2 != --* ]]; then
    printf -v "$var" '%s' "$2"
    TAKEN=2
  else
    die "$1 needs a value"
  fi
}

# Parses one of the flags shared by all scripts; returns 1 (consuming nothing) for any other.
# shellcheck disable=SC2034  # TAKEN is read by the sourcing script's `shift "$TAKEN"`.
parse_common_flag() {
  TAKEN=1
  case $1 in
    --name | --name=*) take_value TPU_NAME "$@" ;;
    --zone | --zone=*) take_value TPU_ZONE "$@" ;;
    --project | --project=*) take_value TPU_PROJECT "$@" ;;
    --dry-run) TPU_DRY_RUN=1 ;;
    *) return 1 ;;
  esac
}

# Fails with one line naming the flag and its environment variable when a setting is empty.
require() {
  local flag=$1 var=$2
  [[ -n ${!var} ]] || die "$flag is required (or set $var); see $SCRIPT_NAME --help"
}

# The flags that place a resource: --zone always, --project when one is set.
location_flags() {
  LOCATION_FLAGS=("--zone=$TPU_ZONE")
  if [[ -n $TPU_PROJECT ]]; then
    LOCATION_FLAGS+=("--project=$TPU_PROJECT")
  fi
}

# Runs `gcloud ARGS...`; with --dry-run prints it instead (one shell-quoted line on stdout).
# A real run echoes the command to stderr first, so a log shows what was done.
run_gcloud() {
  if [[ $TPU_DRY_RUN == 1 ]]; then
    quote_command gcloud "$@"
    echo
    return 0
  fi
  command -v gcloud >/dev/null || die "gcloud not found on PATH (install the Google Cloud CLI)"
  echo "+ $(quote_command gcloud "$@")" >&2
  gcloud "$@"
}

# ssh to the workers: `tpu_ssh COMMAND [extra gcloud flags...]`. The command runs in the
# worker's login shell (bash on Cloud TPU images) from the remote home directory.
tpu_ssh() {
  local command=$1
  shift
  location_flags
  run_gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" \
    "--worker=$TPU_WORKER" "--command=$command" "$@"
}

# Copies this checkout to $TPU_REMOTE_DIR on the workers.
#
# What travels: the files git sees in the working tree, i.e. tracked files (with uncommitted
# edits) plus untracked files that .gitignore does not exclude. So .venv/, runs/, .git/ and
# tpu_logs/ never leave this machine, and uncommitted work is not silently dropped (as
# `git archive HEAD` would). They go as one tarball (one scp per worker, not one per file);
# the remote side first removes the files the previous sync put there (listed in
# .synced_files), so a module deleted here does not linger there, and leaves everything else
# (.venv/, logs/, runs/) alone.
sync_checkout() {
  local tarball="${TMPDIR:-/tmp}/irl_jax-sync-$TPU_NAME.tar.gz"
  local remote_tarball="irl_jax-sync.tar.gz"
  local dir
  dir=$(quote_arg "$TPU_REMOTE_DIR")
  if [[ $TPU_DRY_RUN == 1 ]]; then
    echo "# (dry run) would pack the checkout's git-visible files into $tarball" >&2
  else
    git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
      die "$REPO_ROOT is not a git checkout; the sync packs the files git lists"
    # The tarball is ours alone: removed however this script exits (the trap runs after this
    # function returned, so it reads a global).
    SYNC_TARBALL=$tarball
    trap 'rm -f "$SYNC_TARBALL"' EXIT
    # Files deleted here but still in the index are skipped; names are NUL-separated throughout.
    git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' path; do
        if [[ -e $REPO_ROOT/$path || -L $REPO_ROOT/$path ]]; then printf '%s\0' "$path"; fi
      done |
      COPYFILE_DISABLE=1 tar -C "$REPO_ROOT" -czf "$tarball" --null -T - # no macOS ._ files
  fi
  location_flags
  run_gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$remote_tarball" \
    "${LOCATION_FLAGS[@]}" "--worker=$TPU_WORKER"
  tpu_ssh "mkdir -p $dir && cd $dir && if [ -f .synced_files ]; then xargs -d '\\n' rm -f -- < .synced_files; fi && tar -xzf ~/$remote_tarball && tar -tzf ~/$remote_tarball > .synced_files && rm -f ~/$remote_tarball"
}
