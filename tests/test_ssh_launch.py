"""`ray up` / `ray submit` / `ray down` for real, over SSH to 127.0.0.1.

The test starts its own OpenSSH server (Debian's openssh-server; a throwaway host key and client
key, root login by key only, its own port on 127.0.0.1, its own authorized_keys file). Ray's
cluster config has no SSH port field, so the launcher reaches that port through
`ssh_proxy_command: nc 127.0.0.1 PORT`. The cluster is cluster/local.yaml with the machine-specific
parts replaced: head 127.0.0.1 with no workers, no file mounts (the checkout is already here),
nri-ray's venv linked where the YAML installs it, and the head started on free ports in a temp
dir of its own (and without the YAML's `ray stop`, which would stop every Ray on the machine).
A tiny training is submitted with `ray submit cluster/train.py` and must equal the same run with
the local backend. Teardown: `ray down`, then the head's processes and sshd by process id, and the
files `ray up`/`ray submit` wrote into root's home.

.ci/run installs openssh-server, rsync and netcat and sets NRI_RAY_REQUIRE_SSH=1, so there the
test cannot silently skip.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VENV = BIN.parent
HOME = Path.home()
WRITTEN = [HOME / "ray_bootstrap_config.yaml", HOME / "ray_bootstrap_key.pem", HOME / "train.py",
           HOME / "nri-ray-venv"]  # what the launcher (and our setup command) put into root's home
FLAGS = ["--edge-hidden", "16,16", "--node-hidden", "16", "--proposal-hidden", "16", "--rollout", "4",
         "--meta-batch-size", "12", "--rounds", "6", "--eval-every", "3", "--eval-tasks", "8", "--eval-sa-steps", "2",
         "--checkpoint-every", "3", "--num-shards", "2", "--threads", "1", "--seed", "5", "--quiet"]


def missing() -> str | None:
    tools = {"/usr/sbin/sshd": "openssh-server", "ssh": "openssh-client", "rsync": "rsync", "nc": "netcat-openbsd"}
    gone = [pkg for tool, pkg in tools.items() if not shutil.which(tool)]
    if gone:
        return "needs " + ", ".join(gone)
    if os.geteuid() != 0:
        return "needs root (the launcher logs in as root by key)"
    clobber = [str(p) for p in WRITTEN if p.exists() or p.is_symlink()]
    if clobber:
        return "would overwrite " + ", ".join(clobber)
    return None


reason = missing()
if reason and os.environ.get("NRI_RAY_REQUIRE_SSH"):
    raise RuntimeError(f"NRI_RAY_REQUIRE_SSH is set but the SSH launch test {reason}")
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the head's private temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return [p for p in pids if p != os.getpid()]


def kill(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


@pytest.fixture
def sshd():
    tmp = Path(tempfile.mkdtemp(prefix="nrissh-", dir="/tmp"))  # short: Unix socket paths have a length limit
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    (tmp / "authorized_keys").chmod(0o600)
    port, token = free_port(), secrets.token_hex(16)
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\nPidFile {tmp}/sshd.pid\n"
        f"AuthorizedKeysFile {tmp}/authorized_keys\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        # Token authentication stays on for the cluster: every SSH session (ray start, the
        # submitted driver) gets the throwaway token.
        f"SetEnv RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token} RAY_USAGE_STATS_ENABLED=0\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "sshd.log", "w"))
    try:
        wait_for_port(port)
        yield {"tmp": tmp, "port": port, "token": token, "key": tmp / "client_key"}
    finally:
        kill([proc.pid])
        shutil.rmtree(tmp, ignore_errors=True)


def cluster_config(sshd, ray_port: int) -> dict:
    c = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    c["cluster_name"] = f"nri-ray-ssh-test-{sshd['port']}"
    c["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    c["auth"] = {"ssh_user": "root", "ssh_private_key": str(sshd["key"]),
                 "ssh_proxy_command": f"nc 127.0.0.1 {sshd['port']}"}
    c["min_workers"] = c["max_workers"] = 0
    c["file_mounts"] = {}
    c["setup_commands"] = [f"ln -sfn {VENV} ~/nri-ray-venv"]  # where local.yaml installs nri-ray
    start = [s for s in c["head_start_ray_commands"] if "ray start" in s][0]
    c["head_start_ray_commands"] = [
        start.replace("--port=6379", f"--port={ray_port}")
        + f" --node-ip-address=127.0.0.1 --num-cpus=2 --include-dashboard=false --temp-dir={sshd['tmp']}/ray"
          " --disable-usage-stats"]
    c["worker_start_ray_commands"] = []
    return c


def test_ray_up_submit_down_over_ssh(sshd, tmp_path, tiny_dataset):
    from nri_ray import cli

    ray_port = free_port()
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(cluster_config(sshd, ray_port)))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    state = Path("/tmp/ray") / f"cluster-nri-ray-ssh-test-{sshd['port']}.state"
    ray = str(BIN / "ray")
    try:
        up = subprocess.run([ray, "up", "-y", "--no-config-cache", "--disable-usage-stats", str(config)], env=env,
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        assert pids_mentioning(f"{sshd['tmp']}/ray"), "ray up returned but no head process runs"

        run_dir = tmp_path / "submitted"
        submit = subprocess.run([ray, "submit", "--no-config-cache", str(config), str(ROOT / "cluster" / "train.py"),
                                 "--", "--address", f"127.0.0.1:{ray_port}", "--data", str(tiny_dataset),
                                 "--out", str(run_dir), *FLAGS], env=env, capture_output=True, text=True, timeout=300)
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        assert "added flags: --server-resource nri_server" in log  # the head's resource, found by the entry script
        assert "2 shard actors on 1 Ray node(s)" in log

        assert cli.main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "local"), "--backend", "local",
                         *FLAGS]) == 0
        a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (tmp_path / "local", run_dir))
        torch.testing.assert_close(b["structures"], a["structures"], rtol=0, atol=0)
        for name, tensor in a["modules"].items():
            torch.testing.assert_close(b["modules"][name], tensor, rtol=0, atol=0)

        down = subprocess.run([ray, "down", "-y", str(config)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-4000:]
    finally:
        kill(pids_mentioning(f"{sshd['tmp']}/ray"))  # the head's processes, by process id
        for path in WRITTEN:
            if path.is_symlink() or path.is_file():
                path.unlink()
        for leftover in (state, state.with_suffix(".lock")):
            leftover.unlink(missing_ok=True)
    assert not pids_mentioning(f"{sshd['tmp']}/ray")
