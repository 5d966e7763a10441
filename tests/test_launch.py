"""launch/tpu_vm.sh and launch/gpu.sh: the commands they print with --dry-run,
their argument checks, and (for the pieces that can run here) what those
commands do.

The dry runs use bash alone: PATH points nowhere, so neither gcloud nor
nvidia-smi nor any other program can be found, and the scripts must not need
one.
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu_vm.sh")
GPU = os.path.join(REPO, "launch", "gpu.sh")
BASH = shutil.which("bash")

TPU_REQUIRED = ["--project=my-proj", "--zone=europe-west4-a", "--name=realm",
                "--workdir=gs://my-bucket/runs/ccnews"]
MOUNTED = "/mnt/gcs/my-bucket/runs/ccnews"


def _run(script, *args, env=None, cwd=REPO, bare=True, timeout=60):
  """Runs a launch script; bare: with an empty PATH (bash builtins only)."""
  full_env = {"HOME": os.environ.get("HOME", "/tmp")}
  if not bare:
    full_env.update(os.environ)
    full_env.pop("CUDA_VISIBLE_DEVICES", None)
  full_env["PATH"] = "/nonexistent" if bare else full_env.get("PATH", "")
  full_env.update(env or {})
  return subprocess.run([BASH, script, *args], capture_output=True, text=True,
                        env=full_env, cwd=cwd, timeout=timeout)


def _commands(out: str) -> list[list[str]]:
  """The printed commands ("+ " lines), each split into words."""
  return [shlex.split(line[2:]) for line in out.splitlines()
          if line.startswith("+ ")]


def _flag(words, name):
  """Value of --name=V or --name V in words."""
  for i, w in enumerate(words):
    if w.startswith(name + "="):
      return w.split("=", 1)[1]
    if w == name and i + 1 < len(words):
      return words[i + 1]
  return None


def _tpu_dry(*extra, **kw):
  r = _run(TPU, *TPU_REQUIRED, "--dry-run", *extra, **kw)
  assert r.returncode == 0, r.stderr
  return r, _commands(r.stdout)


def _ssh(cmds, vm):
  return [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm",
                                       "ssh"] and c[5] == vm]


def _python_argv(remote: str, module: str) -> list[str]:
  """The argv after `python` in a remote command that runs `-m module`."""
  words = shlex.split(remote)
  i = words.index(module)
  end = words.index(">", i)
  return words[i + 1:end]


# ------------------------------------------------------------------ tpu_vm.sh

def test_tpu_dry_run_prints_every_step_in_order():
  r, cmds = _tpu_dry("--train_type=v3-64", "--embed_type=v3-8",
                     "--config.train.batch_size=512",
                     "--config.model.init_path=/data/ict run")
  creates = [c for c in cmds if c[4:5] == ["create"]]
  assert [(c[5], _flag(c, "--accelerator-type")) for c in creates] == [
      ("realm-train", "v3-64"), ("realm-embed", "v3-8")]
  for c in creates:
    assert c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
    assert _flag(c, "--project") == "my-proj"
    assert _flag(c, "--zone") == "europe-west4-a"
    assert _flag(c, "--version") == "tpu-ubuntu2204-base"

  # Install: this checkout, packed and copied to every worker of both VMs.
  assert any("git -C" in " ".join(c) and "archive" in c for c in cmds)
  scps = [c for c in cmds if c[4:5] == ["scp"]]
  assert [c[6] for c in scps] == ["realm-train:realm_jax_src.tgz",
                                  "realm-embed:realm_jax_src.tgz"]
  assert all(_flag(c, "--worker") == "all" for c in scps)
  for vm in ("realm-train", "realm-embed"):
    installs = [c for c in _ssh(cmds, vm) if "pip install" in _flag(c, "--command")]
    assert len(installs) == 1 and _flag(installs[0], "--worker") == "all"
    assert "-e '.[tpu]'" in _flag(installs[0], "--command")
    mounts = [c for c in _ssh(cmds, vm) if "gcsfuse" in _flag(c, "--command")]
    assert len(mounts) == 1 and _flag(mounts[0], "--worker") == "all"
    assert f"my-bucket /mnt/gcs/my-bucket" in _flag(mounts[0], "--command")

  prepare = [c for c in _ssh(cmds, "realm-train")
             if "prepare_data.py" in _flag(c, "--command")]
  assert len(prepare) == 1 and _flag(prepare[0], "--worker") == "0"
  assert "JAX_PLATFORMS=cpu" in _flag(prepare[0], "--command")

  embed = [c for c in _ssh(cmds, "realm-embed")
           if "realm_jax.main" in _flag(c, "--command")]
  assert len(embed) == 1 and _flag(embed[0], "--worker") == "all"
  config_and_overrides = [
      "--config=configs/pretrain_ccnews.py", f"--config.workdir={MOUNTED}",
      "--config.train.batch_size=512", "--config.model.init_path=/data/ict run"]
  assert _python_argv(_flag(embed[0], "--command"), "realm_jax.main") == [
      *config_and_overrides, "--config.task=embed"]

  train = [c for c in _ssh(cmds, "realm-train")
           if "realm_jax.main" in _flag(c, "--command")]
  assert len(train) == 1 and _flag(train[0], "--worker") == "all"
  assert _python_argv(_flag(train[0], "--command"), "realm_jax.main") == [
      *config_and_overrides, "--config.index.spawn_embed_job=False"]

  order = [cmds.index(c) for c in (creates[0], scps[0], prepare[0], embed[0],
                                   train[0])]
  assert order == sorted(order)
  # Every remote command is valid shell.
  for c in cmds:
    if "--command" in c:
      check = subprocess.run([BASH, "-n", "-c", _flag(c, "--command")],
                             capture_output=True, text=True)
      assert check.returncode == 0, (check.stderr, c)


def test_tpu_dry_run_needs_no_gcloud_and_calls_none(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  marker = tmp_path / "called"
  (fake / "gcloud").write_text(f"#!/bin/sh\ntouch {marker}\n")
  (fake / "gcloud").chmod(0o755)
  r = _run(TPU, *TPU_REQUIRED, "--dry-run", env={"PATH": str(fake)})
  assert r.returncode == 0, r.stderr
  assert not marker.exists()
  assert sum(line.startswith("+ gcloud") for line in r.stdout.splitlines()) > 5
  # Bare PATH: not installed at all is fine too (every _tpu_dry run), but a
  # real run says what is missing before doing anything.
  r = _run(TPU, *TPU_REQUIRED)
  assert r.returncode != 0
  assert "gcloud not found" in r.stderr
  assert "+ " not in r.stdout


def test_tpu_embedding_job_gets_the_trainers_config_and_overrides():
  overrides = ["--config.index.embed_dtype=bfloat16",
               "--config.index.embed_batch_size=1024",
               "--config.index.keep=2", "--config.index.deterministic=True",
               "--config.index.searcher=exact",
               "--config.index.scann.num_leaves=2000",
               "--config.index.scann.mode=tree",
               "--config.data.block_store=/mnt/blocks"]
  _, cmds = _tpu_dry(*overrides)
  embed, train = [
      _python_argv(_flag(c, "--command"), "realm_jax.main")
      for vm in ("realm-embed", "realm-train") for c in _ssh(cmds, vm)
      if "realm_jax.main" in _flag(c, "--command")]
  assert embed == ["--config=configs/pretrain_ccnews.py",
                   f"--config.workdir={MOUNTED}", *overrides,
                   "--config.task=embed"]
  assert embed[:-1] == train[:-1]


def test_tpu_git_install_spot_version_and_types():
  _, cmds = _tpu_dry("--git=https://github.com/me/realm_jax.git",
                     "--git_ref=v0.1", "--spot", "--train_type=v5litepod-16",
                     "--embed_type", "v4-8")
  assert not [c for c in cmds if c[4:5] == ["scp"] or "archive" in c]
  creates = [c for c in cmds if c[4:5] == ["create"]]
  assert [_flag(c, "--version") for c in creates] == [
      "v2-alpha-tpuv5-lite", "tpu-ubuntu2204-base"]
  assert all("--spot" in c for c in creates)
  for vm in ("realm-train", "realm-embed"):
    install = [_flag(c, "--command") for c in _ssh(cmds, vm)
               if "pip install" in _flag(c, "--command")][0]
    assert "git clone -q https://github.com/me/realm_jax.git ~/realm_jax" in install
    assert "checkout -q v0.1" in install
  _, cmds = _tpu_dry("--version=tpu-vm-custom")
  assert {_flag(c, "--version") for c in cmds if c[4:5] == ["create"]} == {
      "tpu-vm-custom"}


def test_tpu_steps_select_and_keep_their_order():
  _, cmds = _tpu_dry("--steps=train,embed")
  assert len(cmds) == 2
  assert [c[5] for c in cmds] == ["realm-embed", "realm-train"]
  _, cmds = _tpu_dry("--steps=stop")
  assert [c[5] for c in cmds] == ["realm-train", "realm-embed"]
  assert all("kill" in _flag(c, "--command") for c in cmds)


def test_tpu_shared_fs_workdir_is_used_as_is():
  r = _run(TPU, "--project=p", "--zone=us-central1-a", "--name=r",
           "--workdir=/nfs/realm", "--shared_fs", "--dry-run")
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert not any("gcsfuse" in " ".join(c) for c in cmds)
  train = [_flag(c, "--command") for c in _ssh(cmds, "r-train")
           if "realm_jax.main" in _flag(c, "--command")][0]
  assert "--config.workdir=/nfs/realm" in _python_argv(train, "realm_jax.main")


def test_tpu_without_embedding_slice_one_host_may_use_a_local_path():
  """--embed_type=none (e.g. ICT): one VM; on one host a local workdir works."""
  r = _run(TPU, "--project=p", "--zone=europe-west4-a", "--name=ict",
           "--workdir=/home/me/ict", "--train_type=v3-8", "--embed_type=none",
           "--config=configs/ict_wiki.py", "--dry-run")
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert [c[5] for c in cmds if c[4:5] == ["create"]] == ["ict-train"]
  assert not [c for c in cmds if "ict-embed" in " ".join(c)]
  assert not [c for c in cmds if "--config.task=embed" in " ".join(c)]
  train = [_flag(c, "--command") for c in _ssh(cmds, "ict-train")
           if "realm_jax.main" in _flag(c, "--command")][0]
  assert _python_argv(train, "realm_jax.main")[:2] == [
      "--config=configs/ict_wiki.py", "--config.workdir=/home/me/ict"]
  r = _run(TPU, "--project=p", "--zone=europe-west4-a", "--name=ict",
           "--workdir=/home/me/ict", "--train_type=v3-32", "--embed_type=none",
           "--dry-run")
  assert r.returncode == 2 and "uses 4 hosts" in r.stderr


def test_tpu_multi_host_embed_slice_warns():
  r, _ = _tpu_dry("--embed_type=v3-32")
  assert "warning" in r.stderr and "4 hosts" in r.stderr
  r, _ = _tpu_dry("--embed_type=v3-8")
  assert "warning" not in r.stderr


def test_tpu_remote_job_start_and_stop(tmp_path):
  """The detached-start and stop commands, run here with a stand-in python."""
  home = tmp_path / "home"
  (home / "realm_jax").mkdir(parents=True)
  (home / "realm_venv" / "bin").mkdir(parents=True)
  py = home / "realm_venv" / "bin" / "python"
  # Writes its arguments whole (to a temporary file, then renamed), then
  # waits until it is stopped: the stop step below is what ends it.
  py.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/args.tmp"\n'
                'mv "$HOME/args.tmp" "$HOME/args.txt"\nexec sleep 100000\n')
  py.chmod(0o755)
  _, cmds = _tpu_dry("--steps=train", "--config.model.init_path=/a b")
  start = _flag(cmds[0], "--command")
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  assert subprocess.run([BASH, "-c", start], env=env, timeout=30).returncode == 0
  pid = int((home / "realm_logs" / "train.pid").read_text())
  try:
    _wait_until(lambda: (home / "args.txt").exists(),
                "the started job never wrote its arguments")
    assert _alive(pid)
    args = (home / "args.txt").read_text().splitlines()
    assert args[:2] == ["-m", "realm_jax.main"]
    assert "--config.model.init_path=/a b" in args
    again = subprocess.run([BASH, "-c", start], env=env, capture_output=True,
                           text=True, timeout=30)
    assert again.returncode == 1 and "already running" in again.stderr
    _, stop = _tpu_dry("--steps=stop")
    assert subprocess.run([BASH, "-c", _flag(stop[0], "--command")], env=env,
                          timeout=30).returncode == 0
    _wait_until(lambda: not _alive(pid), "the stop step left the job running")
    assert not (home / "realm_logs" / "train.pid").exists()
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _wait_until(condition, message, deadline_s=120):
  """Polls `condition` until true; the deadline is a hang guard only."""
  deadline = time.monotonic() + deadline_s
  while not condition():
    assert time.monotonic() < deadline, message
    time.sleep(0.05)


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_tpu_help():
  r = _run(TPU, "--help", bare=False)
  assert r.returncode == 0 and "Usage: launch/tpu_vm.sh" in r.stdout


TPU_BAD = [
    (["--zone=z-a1-a", "--name=r", "--workdir=gs://b/p"], "--project is required"),
    (["--project=p", "--name=r", "--workdir=gs://b/p"], "--zone is required"),
    (["--project=p", "--zone=europe-west4-a", "--workdir=gs://b/p"],
     "--name is required"),
    (["--project=p", "--zone=europe-west4-a", "--name=r"], "--workdir is required"),
    ([*TPU_REQUIRED, "--train_type=tpu-64"], "not a Cloud TPU accelerator type"),
    ([*TPU_REQUIRED, "--embed_type=v3-16"], "there is no v3-16"),
    ([*TPU_REQUIRED, "--train_type=v4-12"], "multiple of 8"),
    ([*TPU_REQUIRED, "--train_type=v6e-12"], "v6e slices"),
    (["--project=p", "--zone=europe-west4-a", "--name=r", "--workdir=/data/run"],
     "is not a gs:// URL, but the run uses 9 hosts"),
    (["--project=p", "--zone=europe-west4-a", "--name=r", "--workdir=rel",
      "--shared_fs"], "absolute path"),
    (["--project=p", "--zone=europe-west4-a", "--name=r", "--workdir=gs://Bad"],
     "not a gs://BUCKET"),
    ([*TPU_REQUIRED, "--config.workdir=/x"], "--workdir"),
    ([*TPU_REQUIRED, "--config.index.spawn_embed_job=True"], "spawn_embed_job"),
    ([*TPU_REQUIRED, "--config.train.batch_size"], "needs a value"),
    ([*TPU_REQUIRED, "--bogus"], "unknown argument: --bogus"),
    ([*TPU_REQUIRED, "--steps=create,launch"], "unknown step 'launch'"),
    ([*TPU_REQUIRED, "--config=configs/nope.py"], "no such file"),
    ([*TPU_REQUIRED, "--config=/etc/passwd"], "inside the repository"),
    ([*TPU_REQUIRED, "--name=Realm"], "--name=Realm"),
    ([*TPU_REQUIRED, "--zone=europe"], "does not look like a zone"),
    ([*TPU_REQUIRED, "--git_ref=main"], "--git_ref needs --git"),
    ([*TPU_REQUIRED, "--project"], "--project needs a value"),
    ([*TPU_REQUIRED, "--embed_type=none", "--steps=embed,train"],
     "--steps includes embed, but --embed_type=none"),
]


@pytest.mark.parametrize("args,message", TPU_BAD,
                         ids=[m for _, m in TPU_BAD])
def test_tpu_bad_arguments_exit_nonzero_with_a_clear_message(args, message):
  r = _run(TPU, *args, "--dry-run")
  assert r.returncode != 0
  assert "error:" in r.stderr and message in r.stderr, r.stderr
  assert "+ " not in r.stdout  # nothing printed, nothing run


# ------------------------------------------------------------------ gpu.sh

def _gpu_dry(*args, env=None, cwd=REPO):
  r = _run(GPU, "--dry-run", *args, env=env, cwd=cwd)
  assert r.returncode == 0, r.stderr
  return r, _commands(r.stdout)


def _env_of(cmd):
  """{VAR: value} of a printed `env A=B ... prog` command, and prog's argv."""
  assert cmd[0] == "env"
  env, i = {}, 1
  while "=" in cmd[i] and not cmd[i].startswith("-"):
    k, v = cmd[i].split("=", 1)
    env[k] = v
    i += 1
  return env, cmd[i:]


def _only(cmds, embed_job):
  """{VAR: value} and argv of the one embedding job (embed_job=True) or
  trainer command: both run realm_jax.main."""
  found = [c for c in cmds if "realm_jax.main" in c and
           ("--config.task=embed" in c) == embed_job]
  assert len(found) == 1, cmds
  return _env_of(found[0])


def _embed_job(cmds):
  return _only(cmds, embed_job=True)


def _trainer(cmds):
  return _only(cmds, embed_job=False)


def test_gpu_default_split_last_gpu_embeds():
  r, cmds = _gpu_dry("--workdir=/data/realm", "--num_gpus=4", "--python=python3",
                     "--config.train.batch_size=66", "--config.model.init_path=/x y")
  prep_env, prep = _env_of(cmds[0])
  assert prep_env == {"JAX_PLATFORMS": "cpu"}
  assert prep[:2] == ["python3", "launch/prepare_data.py"]
  embed_env, embed = _embed_job(cmds)
  assert embed_env == {"CUDA_VISIBLE_DEVICES": "3"}
  assert embed[:3] == ["python3", "-m", "realm_jax.main"]
  assert embed[-6] == "--config.task=embed"
  assert re.fullmatch(r"--config\.index\.embed_parent_pid=\d+", embed[-5])
  assert embed[-4:] == [">", "/data/realm/logs/embed.log", "2>&1", "&"]
  train_env, train = _trainer(cmds)
  assert train_env == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
  assert train == ["python3", "-m", "realm_jax.main",
                   "--config=configs/pretrain_ccnews.py",
                   "--config.workdir=/data/realm", "--config.train.batch_size=66",
                   "--config.model.init_path=/x y",
                   "--config.index.spawn_embed_job=False"]
  assert prep[2:] == train[3:-1] == embed[3:-6]   # same config and overrides
  assert [c[-1] for c in cmds][1:] == ["&", "--config.index.spawn_embed_job=False"]
  assert "trainer 0,1,2, embedding job 3" in r.stdout


def test_gpu_split_sizes_and_inherited_devices():
  _, cmds = _gpu_dry("--workdir=/w", "--num_gpus=8", "--embed_gpus=2")
  assert _embed_job(cmds)[0]["CUDA_VISIBLE_DEVICES"] == "6,7"
  assert _trainer(cmds)[0]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5"
  # A scheduler's allocation is respected: the last of its GPUs embeds.
  _, cmds = _gpu_dry("--workdir=/w", env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
  assert _embed_job(cmds)[0]["CUDA_VISIBLE_DEVICES"] == "7"
  assert _trainer(cmds)[0]["CUDA_VISIBLE_DEVICES"] == "4,5,6"
  _, cmds = _gpu_dry("--workdir=/w", "--num_gpus=2",
                     env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
  assert _embed_job(cmds)[0]["CUDA_VISIBLE_DEVICES"] == "5"
  assert _trainer(cmds)[0]["CUDA_VISIBLE_DEVICES"] == "4"


def test_gpu_embed_gpus_zero_shares_every_gpu():
  _, cmds = _gpu_dry("--workdir=/w", "--num_gpus=1", "--embed_gpus=0")
  embed_env, _ = _embed_job(cmds)
  train_env, _ = _trainer(cmds)
  assert embed_env["CUDA_VISIBLE_DEVICES"] == train_env["CUDA_VISIBLE_DEVICES"] == "0"
  fractions = (float(embed_env["XLA_PYTHON_CLIENT_MEM_FRACTION"]),
               float(train_env["XLA_PYTHON_CLIENT_MEM_FRACTION"]))
  assert sum(fractions) < 1


def test_gpu_embedding_job_gets_the_trainers_config_and_overrides(monkeypatch):
  overrides = ["--config.index.embed_dtype=bfloat16",
               "--config.index.embed_batch_size=128",
               "--config.index.deterministic=true",
               "--config.data.block_store=/fast/blocks"]
  _, cmds = _gpu_dry("--workdir=/w", "--num_gpus=2", "--skip_prepare",
                     "--config=configs/tiny_cpu.py", *overrides)
  assert len(cmds) == 2  # no preparation
  _, embed = _embed_job(cmds)
  _, train = _trainer(cmds)
  assert embed[3:-6] == train[3:-1] == [
      "--config=configs/tiny_cpu.py", "--config.workdir=/w", *overrides]
  # The job's command line is one realm_jax.main accepts, and gives the job
  # what it needs: the trainer's settings, task=embed, the pid to watch.
  from absl import flags
  from ml_collections import config_flags
  argv = ["realm_jax.main", *embed[3:-4]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values,
                                  sys_argv=argv)
  monkeypatch.chdir(REPO)
  values(argv)
  config = values.config
  assert config.task == "embed" and config.workdir == "/w"
  assert config.index.embed_dtype == "bfloat16"
  assert config.index.embed_batch_size == 128
  assert config.index.deterministic is True
  assert config.data.block_store == "/fast/blocks"
  assert config.index.embed_parent_pid == int(embed[-5].split("=")[1]) > 0


def test_gpu_multi_node_sets_what_partition_reads():
  common = ["--workdir=/nfs/realm", "--num_gpus=8", "--num_nodes=2",
            "--coordinator=10.0.0.1:4321"]
  _, cmds0 = _gpu_dry(*common, "--node_rank=0")
  embed_env, _ = _embed_job(cmds0)
  assert not any(k.startswith("JAX_") for k in embed_env)
  train_env, _ = _trainer(cmds0)
  assert train_env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6",
                       "JAX_COORDINATOR_ADDRESS": "10.0.0.1:4321",
                       "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
  r, cmds1 = _gpu_dry(*common, "--node_rank=1")
  assert not [c for c in cmds1 if "--config.task=embed" in c]
  assert not [c for c in cmds1 if "launch/prepare_data.py" in c]
  assert "wait until /nfs/realm/blocks/manifest.json exists" in r.stdout
  train_env, _ = _trainer(cmds1)
  assert train_env["JAX_PROCESS_ID"] == "1"
  # Same number of trainer GPUs on every node.
  assert train_env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_gpu_multi_node_env_joins_jax_distributed(tmp_path):
  """Two processes with the environment gpu.sh gives nodes 0 and 1 form one
  JAX job through realm_jax.train.partition.maybe_initialize_distributed."""
  port = _free_port()
  probe = tmp_path / "probe.py"
  probe.write_text(textwrap.dedent("""\
      import jax
      from realm_jax.train import partition
      partition.maybe_initialize_distributed()
      print("JOINED", jax.process_index(), jax.process_count(), flush=True)
      """))
  procs = []
  for rank in (0, 1):
    _, cmds = _gpu_dry("--workdir=/w", "--num_gpus=2", "--num_nodes=2",
                       f"--node_rank={rank}", f"--coordinator=127.0.0.1:{port}")
    env, _ = _trainer(cmds)
    env.pop("CUDA_VISIBLE_DEVICES")
    full = dict(os.environ, JAX_PLATFORMS="cpu", **env)
    procs.append(subprocess.Popen([sys.executable, str(probe)], env=full,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])   # a hang guard
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for rank, out in enumerate(outs):
    assert f"JOINED {rank} 2" in out, out


def test_gpu_relative_workdir_is_the_callers(tmp_path):
  _, cmds = _gpu_dry("--workdir=runs/a", "--num_gpus=2", cwd=tmp_path)
  _, train = _trainer(cmds)
  assert f"--config.workdir={tmp_path}/runs/a" in train


def test_gpu_help():
  r = _run(GPU, "--help", bare=False)
  assert r.returncode == 0 and "Usage: launch/gpu.sh" in r.stdout


GPU_BAD = [
    ([], {}, "--workdir is required"),
    (["--workdir=gs://b/p"], {}, "POSIX"),
    (["--workdir=/w"], {}, "pass --num_gpus"),
    (["--workdir=/w", "--num_gpus=1"], {}, "leaves no GPU for the trainer"),
    (["--workdir=/w", "--num_gpus=4", "--embed_gpus=4"], {}, "leaves no GPU"),
    (["--workdir=/w", "--num_gpus=two"], {}, "--num_gpus=two"),
    (["--workdir=/w", "--num_gpus=4", "--embed_gpus=-1"], {}, "--embed_gpus=-1"),
    (["--workdir=/w", "--num_gpus=8"], {"CUDA_VISIBLE_DEVICES": "0,1"},
     "CUDA_VISIBLE_DEVICES=0,1 lists 2"),
    (["--workdir=/w", "--num_gpus=4", "--num_nodes=2", "--node_rank=0"], {},
     "needs --coordinator"),
    (["--workdir=/w", "--num_gpus=4", "--num_nodes=2",
      "--coordinator=h:1"], {}, "needs --node_rank"),
    (["--workdir=/w", "--num_gpus=4", "--num_nodes=2", "--node_rank=2",
      "--coordinator=h:1"], {}, "expected 0..1"),
    (["--workdir=/w", "--num_gpus=4", "--num_nodes=2", "--node_rank=1",
      "--coordinator=h"], {}, "expected HOST:PORT"),
    (["--workdir=/w", "--num_gpus=4", "--coordinator=h:1"], {},
     "only for --num_nodes > 1"),
    (["--workdir=/w", "--num_gpus=4", "--config=configs/nope.py"], {},
     "no such file"),
    (["--workdir=/w", "--num_gpus=4", "--config.workdir=/x"], {}, "--workdir"),
    (["--workdir=/w", "--num_gpus=4", "--gpus=1"], {}, "unknown argument"),
    (["--workdir=/w", "--num_gpus=8", "--config.train.batch_size=512"], {},
     "does not split over the trainer's 7 GPU(s)"),
    (["--workdir=/w", "--num_gpus=4", "--num_nodes=2", "--node_rank=0",
      "--coordinator=h:1", "--config.train.batch_size=4"], {},
     "trainer's 6 GPU(s)"),
]


@pytest.mark.parametrize("args,env,message", GPU_BAD,
                         ids=[m for _, _, m in GPU_BAD])
def test_gpu_bad_arguments_exit_nonzero_with_a_clear_message(args, env, message):
  r = _run(GPU, *args, "--dry-run", env=env)
  assert r.returncode != 0
  assert "error:" in r.stderr and message in r.stderr, r.stderr
  assert "+ " not in r.stdout


# ------------------------------------------------------------------ real runs

def test_prepare_data_builds_the_block_store(tmp_path):
  r = subprocess.run(
      [sys.executable, "launch/prepare_data.py", "--config=configs/tiny_cpu.py",
       f"--config.workdir={tmp_path}", "--config.task=ict",
       "--config.data.corpus_limit=20"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "blocks" / "manifest.json").is_file()
  assert "prepared: block store" in r.stdout


@pytest.mark.slow
def test_gpu_sh_runs_pretraining_and_stops_its_embedding_job(tmp_path):
  """The real thing on the CPU (CUDA_VISIBLE_DEVICES is then moot): prepare,
  the embedding job in the background, the trainer, then the job stopped."""
  r = _run(GPU, f"--workdir={tmp_path}", "--config=configs/tiny_cpu.py",
           "--num_gpus=2", "--config.train.num_steps=12", bare=False,
           timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert (tmp_path / "index" / "0" / "manifest.json").is_file()
  killed = re.search(r"^\+ kill (\d+)$", r.stdout, re.M)
  assert killed, r.stdout
  assert not _alive(int(killed.group(1)))
