#!/usr/bin/env python3
"""Fault-injection soak of a data-parallel training run (mpi.train_soak*).

Trains a tiny Llama on N ranks twice with `borealis launch`: once without
faults (the reference), once under `launch --max-restarts` while this script's
fault injector, watching the run's metrics log, kills ranks (SIGKILL), hangs
them (SIGSTOP until the job's time-out ends it) and slows them (SIGSTOP, then
SIGCONT after a second, inside the time-out) at random steps. The faulted run
must finish with exit status 0 after one restart per kill or hang, and its
final weights and optimizer moments, and the loss of every step, must equal
the reference bit for bit. With --checkpoint-faults the faulted run also has a
rank killed in the middle of a checkpoint write (BOREALIS_TEST_FAULT ...:killsave,
once), after which it must resume from the checkpoint before. Checkpoints are
asynchronous (the default), so faults also land while one is being written;
--zero 1 shards the moments, whose checkpoints then come from every rank.

--disk-full instead checks a checkpoint write that runs out of space (a file
size limit, RLIMIT_FSIZE, as a full disk would stop it): a clear error naming
the file, and the previous checkpoint intact, so that the run then resumes.

Every wait is bounded; the whole test takes well under a minute per mode.
"""

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STEPS = 40
DEADLINE_S = 240  # for a whole faulted run


def fail(msg):
    print(f"soak_test: FAILED: {msg}", flush=True)
    sys.exit(1)


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if p.returncode != 0:
        fail(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def write_corpus(work, borealis):
    rng = random.Random(11)
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    with open(work / "corpus.jsonl", "w") as f:
        for _ in range(300):
            start, stride = rng.randrange(len(words)), rng.randrange(1, 4)
            text = " ".join(words[(start + k * stride) % len(words)] for k in range(60))
            f.write(json.dumps({"text": text}) + "\n")
    run([borealis, "--log-level", "warn", "tokenizer", "train", "--vocab-size", "400", "-i",
         work / "corpus.jsonl", "-o", work / "tok.json"])
    run([borealis, "--log-level", "warn", "data", "prepare", "-i", work / "corpus.jsonl", "-t",
         work / "tok.json", "-o", work / "corpus", "--append-eod"])
    (work / "list.txt").write_text(f"1.0 {work / 'corpus'}\n")


def write_config(work, name, ranks, extra="", zero=0):
    run_dir = work / name
    cfg = work / f"{name}.toml"
    cfg.write_text(f"""
[model]
preset = "llama-5m"
n_layer = 2
d_model = 128
n_head = 4
n_kv_head = 2
d_ff = 256
max_seq = 64
[data]
data_list = "{work / 'list.txt'}"
tokenizer = "{work / 'tok.json'}"
seq_len = 64
split = [100, 0, 0]
[optim]
lr = 3e-3
warmup_steps = 4
[train]
run_dir = "{run_dir}"
steps = {STEPS}
micro_batch = 2
global_batch = {4 * ranks}
seed = 5
peak_gflops = 1
log_every = 10
{extra}
[checkpoint]
every = 3
keep = 2
[eval]
batches = 0
[dist]
timeout_s = 6
straggler_every = 5
zero = {zero}
""")
    return cfg, run_dir


def launch_cmd(borealis, ranks, cfg, restarts=None):
    cmd = [borealis, "launch", "-n", str(ranks), "--threads-per-rank", "1"]
    if restarts is not None:
        cmd += ["--max-restarts", str(restarts), "--restart-delay", "0"]
    return cmd + ["--", borealis, "--log-level", "warn", "train", str(cfg)]


def losses(run_dir):
    """The last logged loss of every step (a resumed run logs steps again)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            out[rec["step"]] = rec["loss"]
    return out


def last_step(run_dir):
    step = 0
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "train":
            step = rec["step"]
    return step


def weights(run_dir):
    """Digests of the final checkpoint's parameters and moments."""
    ckpt = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    if not ckpt.is_dir():
        found = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        fail(f"no final checkpoint {ckpt} (found {found})")
    out = {}
    for f in sorted(ckpt.iterdir()):
        if f.suffix == ".safetensors":
            out[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def rank_pids(cfg):
    """pid of each rank of the job that trains `cfg`."""
    pids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
            if str(cfg).encode() not in cmdline or b"train" not in cmdline:
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK=") or kv.startswith(b"PMI_RANK="):
                pids[int(kv.split(b"=", 1)[1])] = int(d.name)
    return pids


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


class Injector(threading.Thread):
    def __init__(self, cfg, run_dir, ranks, plan):
        super().__init__(daemon=True)
        self.cfg, self.run_dir, self.ranks, self.plan = cfg, run_dir, ranks, plan
        self.done = threading.Event()
        self.log, self.error = [], None

    def wait_step(self, step, until):
        while time.monotonic() < until and not self.done.is_set():
            if last_step(self.run_dir) >= step:
                pids = rank_pids(self.cfg)
                if len(pids) == self.ranks:
                    return pids
            time.sleep(0.005)
        return None

    def run(self):
        until = time.monotonic() + DEADLINE_S
        for kind, step, rank in self.plan:
            pids = self.wait_step(step, until)
            if pids is None:
                self.error = f"the run did not reach step {step} for the {kind} fault"
                return
            pid = pids[rank]
            at = last_step(self.run_dir)
            self.log.append(f"{kind} rank {rank} (pid {pid}) after step {at}")
            print(f"soak_test: {self.log[-1]}", flush=True)
            if kind == "kill":
                os.kill(pid, signal.SIGKILL)
            elif kind == "slow":
                os.kill(pid, signal.SIGSTOP)
                time.sleep(1.0)
                os.kill(pid, signal.SIGCONT)
                continue
            else:
                os.kill(pid, signal.SIGSTOP)
            # The job must end the failed attempt by itself: the others time
            # out (hang) or the MPI launcher ends them (kill).
            end = time.monotonic() + 30
            while time.monotonic() < end and any(alive(p) for p in pids.values()):
                time.sleep(0.05)
            if any(alive(p) for p in pids.values()):
                self.error = f"the job was still running 30 s after the {kind} fault"
                for p in pids.values():
                    os.kill(p, signal.SIGKILL)
                return


def soak(borealis, work, ranks, seed, checkpoint_faults, zero):
    ref_cfg, ref_dir = write_config(work, "reference", ranks, zero=zero)
    t0 = time.monotonic()
    run(launch_cmd(borealis, ranks, ref_cfg))
    print(f"soak_test: reference run of {STEPS} steps on {ranks} ranks: "
          f"{time.monotonic() - t0:.1f} s", flush=True)

    cfg, run_dir = write_config(work, "faulted", ranks, zero=zero)
    rng = random.Random(seed)
    kinds = ["kill", "hang", "slow", "kill", "slow", "hang"]
    rng.shuffle(kinds)
    plan, step = [], 2
    for kind in kinds:
        step += rng.randrange(3, 6)
        plan.append((kind, step, rng.randrange(ranks)))
    if plan[-1][1] >= STEPS - 1:
        fail(f"fault plan runs past the run: {plan}")
    env = dict(os.environ)
    restarts = sum(k != "slow" for k, _, _ in plan)
    if checkpoint_faults:
        # Rank 0 (the writer of the replicated files) dies inside the write of
        # the checkpoint of step 33, once.
        env["BOREALIS_TEST_FAULT"] = "0:33:killsave"
        env["BOREALIS_TEST_FAULT_ONCE"] = str(work / "killsave.done")
        restarts += 1
    injector = Injector(cfg, run_dir, ranks, plan)
    injector.start()
    t0 = time.monotonic()
    p = subprocess.run(launch_cmd(borealis, ranks, cfg, restarts=restarts + 2),
                       capture_output=True, text=True, env=env, timeout=DEADLINE_S)
    injector.done.set()
    injector.join(timeout=35)
    elapsed = time.monotonic() - t0
    print(p.stderr[-6000:])
    if injector.error:
        fail(injector.error)
    if p.returncode != 0:
        fail(f"the faulted run exited {p.returncode}")
    failed = p.stderr.count("launch: attempt ")
    if failed != restarts:
        fail(f"{failed} failed attempts for {restarts} faults that end a job")
    if checkpoint_faults:
        if not (work / "killsave.done").exists():
            fail("the kill during the checkpoint write did not happen")
        if "killsave" not in p.stderr:
            fail("the kill during the checkpoint write is not in the log")
    ref_losses, got_losses = losses(ref_dir), losses(run_dir)
    if ref_losses != got_losses:
        diff = [s for s in ref_losses if ref_losses[s] != got_losses.get(s)]
        fail(f"the loss curve differs from the uninterrupted run at steps {diff[:10]}")
    if weights(ref_dir) != weights(run_dir):
        fail("the final weights or moments differ from the uninterrupted run")
    stragglers = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"straggler"' in l]
    if not stragglers:
        fail("no straggler report in the metrics log")
    print(f"soak_test: passed: {ranks} ranks (ZeRO-{zero}), faults {injector.log}, {failed} restarts, "
          f"{elapsed:.1f} s; losses of {len(got_losses)} steps and the final weights are "
          f"bit-identical to the uninterrupted run", flush=True)


def disk_full(borealis, work):
    cfg, run_dir = write_config(work, "diskfull", 1)
    # 12 steps with checkpoints at 3, 6, 9; then the run is continued to
    # step 40 under a 64 KiB file size limit: the checkpoint of step 12 cannot
    # be written.
    run([borealis, "--log-level", "warn", "train", str(cfg), "--stop-at-step", "12"])
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    p = subprocess.run([borealis, "--log-level", "warn", "train", str(cfg)], capture_output=True,
                       text=True, timeout=120, preexec_fn=limit)
    print(p.stderr[-3000:])
    if p.returncode == 0:
        fail("the run with a full disk exited 0")
    err = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    if not err or "File too large" not in err[-1] or "checkpoints" not in err[-1]:
        fail(f"expected an error naming the checkpoint file that could not be written: {err}")
    after = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    complete = [n for n in after if n.startswith("step-") and "." not in n]
    if complete != [n for n in before if "." not in n]:
        fail(f"the checkpoints changed: {before} -> {after}")
    if any(".tmp-" in n for n in after):
        fail(f"a partial checkpoint was left behind: {after}")
    p = run([borealis, "train", str(cfg)])
    if "resuming from" not in p.stderr or "step-00000012" not in p.stderr:
        fail(f"the run did not resume from the last checkpoint:\n{p.stderr[-2000:]}")
    print(f"soak_test: passed: a full disk at the checkpoint of step 15 failed with '{err[-1]}', "
          f"kept {complete}, and the run resumed and finished", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("borealis")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkpoint-faults", action="store_true")
    ap.add_argument("--disk-full", action="store_true")
    ap.add_argument("--zero", type=int, default=0, help="dist.zero of the soak runs")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="borealis-soak-") as tmp:
        work = Path(tmp)
        write_corpus(work, a.borealis)
        if a.disk_full:
            disk_full(a.borealis, work)
        else:
            soak(a.borealis, work, a.ranks, a.seed, a.checkpoint_faults, a.zero)


if __name__ == "__main__":
    main()
