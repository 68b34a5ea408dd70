"""Pure Slurm builders/parsers, with output captured from Slurm 22.05 and 24.11."""

import shlex

import pytest

from jupyter_hpc import slurm
from jupyter_hpc.slurm import DELIM, JobInfo, JobRequest, Line
from jupyter_hpc.validate import ValidationError

D = DELIM

# squeue -O ... on Slurm 22.05.8 (Debian 12 testbed), one record per job, every field terminated.
SQUEUE_2205 = (
    f"3{D}sbatch{D}bob{D}PENDING{D}Resources{D}{D}cpu{D}0:00{D}1:00:00{D}2026-11-25T11:56:32{D}"
    f"2026-11-25T10:56:31{D}2026-11-25T12:56:32{D}N/A{D}cpu=32,mem=8G,node=1,billing=32{D}(null){D}/tmp{D}"
    f"/dev/null{D}/dev/null{D}0{D}32{D}4294901757{D}(null){D}\n"
    f"4{D}sbatch{D}bob{D}PENDING{D}Priority{D}{D}cpu{D}0:00{D}1:00:00{D}2026-11-25T12:56:00{D}"
    f"2026-11-25T10:56:31{D}2026-11-25T13:56:00{D}N/A{D}cpu=32,mem=8G,node=1,billing=32{D}(null){D}/tmp{D}"
    f"/dev/null{D}/dev/null{D}0{D}32{D}4294901756{D}(null){D}\n"
    f"1{D}j.sh{D}alice{D}COMPLETED{D}None{D}vm{D}gpu{D}0:03{D}1:00:00{D}2026-11-25T10:54:27{D}"
    f"2026-11-25T10:54:27{D}2026-11-25T10:54:30{D}gres:gpu:tesla:1{D}cpu=1,mem=256M,node=1,billing=1{D}"
    f"jupyter-hpc:vm:12345{D}/tmp{D}/tmp/j-%j.out{D}/tmp/j-%j.out{D}0{D}1{D}4294901759{D}(null){D}\n"
    f"2{D}a|b{D}alice{D}RUNNING{D}None{D}vm{D}gpu{D}1-02:03:04{D}UNLIMITED{D}2026-11-25T10:56:32{D}"
    f"2026-11-25T10:56:31{D}2026-11-25T11:56:32{D}gres:gpu:tesla:1{D}cpu=1,mem=256M,node=1,billing=1{D}"
    f"jupyter-hpc:kind=x,host=vm,port=1234{D}/tmp{D}/tmp/alice-%j.out{D}/tmp/alice-%j.out{D}0{D}1{D}4294901758{D}(null){D}\n"
)

# Slurm 24.11 (Debian 13): TRES names carry the gres, states "CANCELLED", exit codes "0:15", a comment with a newline.
SQUEUE_2411 = (
    f"17{D}spawner-alice{D}alice{D}CANCELLED{D}None{D}node01{D}gpu{D}5:01{D}2-00:00:00{D}2026-11-25T10:00:00{D}"
    f"2026-11-25T09:59:58{D}2026-11-25T10:05:01{D}gres/gpu:a100:2{D}"
    f"cpu=4,mem=16G,node=1,billing=4,gres/gpu=2,gres/gpu:a100=2{D}multi\nline{D}/home/alice{D}/home/alice/out-17.txt{D}"
    f"/home/alice/out-17.txt{D}0:15{D}4{D}1000{D}proj1{D}\n"
    f"18_3{D}arr{D}bob{D}PENDING{D}(ReqNodeNotAvail, Reserved for maintenance){D}{D}cpu,gpu{D}0:00{D}30:00{D}N/A{D}"
    f"2026-11-25T10:01:00{D}N/A{D}N/A{D}cpu=1,mem=1G,node=1{D}(null){D}/home/bob{D}/home/bob/slurm-%A_%a.out{D}"
    f"/home/bob/slurm-%A_%a.out{D}0:0{D}1{D}2000{D}proj2{D}\n"
)


def test_squeue_argv_is_fixed_and_validated():
    argv = slurm.squeue_argv(["12", 13], user="alice")
    assert argv[0] == "squeue" and "--noheader" in argv and "--states=all" in argv
    assert "--jobs=12,13" in argv and "--user=alice" in argv
    fmt = [a for a in argv if a.startswith("--Format=")][0]
    assert fmt.count(D) == len(slurm.SQUEUE_FIELDS)
    for bad in (["1;rm"], ["-1"], ["1\n2"], ["$(x)"]):
        with pytest.raises(ValidationError):
            slurm.squeue_argv(bad)
    with pytest.raises(ValidationError):
        slurm.squeue_argv(user="--all")


def test_parse_squeue_2205():
    jobs = slurm.parse_squeue(SQUEUE_2205)
    assert list(jobs) == ["3", "4", "1", "2"]
    p = jobs["3"]
    assert p.state == "PENDING" and p.is_pending and not p.is_finished
    assert p.reason == "Resources" and p.nodes is None and p.node is None
    assert p.start_time == "2026-11-25T11:56:32"  # estimated start while pending
    assert p.time_limit == 60 and p.elapsed == 0 and p.cpus == 32 and p.gpus == {}
    assert p.comment is None and p.account is None and p.priority == 4294901757
    done = jobs["1"]
    assert done.is_finished and done.exit_code == 0 and done.gpus == {"tesla": 1}
    assert done.stdout == "/tmp/j-1.out"  # %j expanded (22.05 reports the pattern)
    assert done.endpoint == ("vm", 12345)
    run = jobs["2"]
    assert run.name == "a|b"  # '|' inside a value does not shift columns
    assert run.is_running and run.elapsed == 93784 and run.time_limit is None
    assert run.endpoint == ("vm", 1234) and run.kind == "x" and run.node == "vm"
    d = run.to_dict()
    assert d["endpoint"] == ["vm", 1234] and d["is_running"] and d["gpu_count"] == 1


def test_parse_squeue_2411():
    jobs = slurm.parse_squeue(SQUEUE_2411)
    assert list(jobs) == ["17", "18_3"]
    c = jobs["17"]
    assert c.state == "CANCELLED" and c.is_finished and c.exit_code == 128 + 15
    assert c.gpus == {"a100": 2} and c.comment == "multi\nline" and c.time_limit == 2 * 24 * 60
    assert c.account == "proj1" and c.endpoint is None and c.meta == {}
    a = jobs["18_3"]
    assert a.is_pending and a.reason.startswith("(ReqNodeNotAvail") and a.start_time is None
    assert a.stdout == "/home/bob/slurm-18_3.out"
    assert a.partition == "cpu,gpu" and a.time_limit == 30


def test_parse_squeue_tolerates_garbage():
    assert slurm.parse_squeue("") == {}
    assert slurm.parse_squeue("squeue: error: something\n") == {}
    # a truncated record is dropped, complete ones kept
    text = SQUEUE_2205 + f"5{D}x{D}"
    assert set(slurm.parse_squeue(text)) == {"1", "2", "3", "4"}


@pytest.mark.parametrize(
    "raw,state",
    [
        ("CANCELLED by 1000", "CANCELLED"),
        ("PD", "PENDING"),
        ("R", "RUNNING"),
        ("COMPLETED+", "COMPLETED"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
        ("NODE_FAIL", "NODE_FAIL"),
        ("(null)", "UNKNOWN"),
        ("", "UNKNOWN"),
        ("TO", "TIMEOUT"),
    ],
)
def test_normalize_state(raw, state):
    assert slurm.normalize_state(raw) == state


@pytest.mark.parametrize(
    "raw,seconds",
    [
        ("0:00", 0),
        ("5:01", 301),
        ("1:00:00", 3600),
        ("1-02:03:04", 93784),
        ("2-00:00:00", 172800),
        ("3-04", 3 * 86400 + 4 * 3600),
        ("00:00:00.010", 0),
        ("UNLIMITED", None),
        ("infinite", None),
        ("N/A", None),
        ("INVALID", None),
        ("(null)", None),
        ("abc", None),
        ("30", 1800),
    ],
)
def test_parse_duration(raw, seconds):
    assert slurm.parse_duration(raw) == seconds


@pytest.mark.parametrize(
    "text,gpus",
    [
        ("gpu:tesla:2", {"tesla": 2}),
        ("gpu:2", {"gpu": 2}),
        ("gpu:a100:4(S:0-1)", {"a100": 4}),
        ("gpu:a100:2(S:0),gpu:v100:1(S:1),shard:8", {"a100": 2, "v100": 1}),
        ("gres:gpu:tesla:1", {"tesla": 1}),
        ("gres/gpu:tesla:1", {"tesla": 1}),
        ("gres/gpu=2", {"gpu": 2}),
        ("cpu=4,mem=16G,node=1,billing=4,gres/gpu=2,gres/gpu:a100=2", {"a100": 2}),
        ("cpu=1,mem=256M,node=1,billing=1", {}),
        ("(null)", {}),
        ("N/A", {}),
        ("", {}),
        (None, {}),
        ("mps:100,gpu:1", {"gpu": 1}),
    ],
)
def test_parse_gres(text, gpus):
    assert slurm.parse_gres(text) == gpus


def test_exit_codes():
    assert slurm.parse_exit_code("0:0") == 0
    assert slurm.parse_exit_code("1:0") == 1
    assert slurm.parse_exit_code("0:9") == 137
    assert slurm.parse_exit_code("N/A") is None
    assert slurm.parse_exit_code("0") == 0


# sinfo --format=%P|%a|%D|%c|%C|%m|%l|%G|%T (with DELIM), 22.05 testbed + a 24.11 multi-group cluster.
SINFO_2205 = (
    f"cpu*{D}up{D}1{D}32{D}1/31/0/32{D}16000{D}1-00:00:00{D}gpu:tesla:2{D}mixed{D}\n"
    f"gpu{D}up{D}1{D}32{D}1/31/0/32{D}16000{D}1-00:00:00{D}gpu:tesla:2{D}mixed{D}\n"
)
SINFO_2411 = (
    f"batch*{D}up{D}10{D}64{D}320/320/0/640{D}256000{D}2-00:00:00{D}(null){D}mixed{D}\n"
    f"batch*{D}up{D}2{D}128{D}0/0/256/256{D}512000{D}2-00:00:00{D}(null){D}drained*{D}\n"
    f"gpu{D}up{D}4{D}48{D}0/192/0/192{D}384000{D}infinite{D}gpu:a100:4(S:0-1){D}idle{D}\n"
    f"gpu{D}up{D}1{D}48{D}48/0/0/48{D}384000{D}infinite{D}gpu:h100:8(S:0-1),shard:16{D}allocated{D}\n"
    f"debug{D}down{D}1{D}8{D}0/8/0/8{D}16000{D}30:00{D}gpu:2{D}idle~{D}\n"
)


def test_parse_sinfo_2205():
    parts = slurm.parse_sinfo(SINFO_2205)
    assert [p.name for p in parts] == ["cpu", "gpu"]
    cpu, gpu = parts
    assert cpu.default and not gpu.default
    assert gpu.gpus == {"tesla": 2} and gpu.max_gpus() == 2 and gpu.max_gpus("tesla") == 2
    assert gpu.max_gpus("a100") == 0 and gpu.gpu_types == ["tesla"]
    assert cpu.cpus == 32 and cpu.memory_mb == 16000 and cpu.max_time_minutes == 1440
    assert cpu.is_up and cpu.nodes == 1 and cpu.cpus_idle == 31
    d = gpu.to_dict()
    assert set(d) >= {"name", "default", "state", "nodes", "cpus", "memory_mb", "max_time_minutes", "gpus"}


def test_parse_sinfo_2411_aggregates():
    parts = {p.name: p for p in slurm.parse_sinfo(SINFO_2411)}
    b = parts["batch"]
    assert b.default and b.nodes == 12 and b.cpus == 64  # drained big nodes are not usable
    assert b.node_states == {"mixed": 10, "drained": 2} and b.cpus_total == 896
    g = parts["gpu"]
    assert g.max_time_minutes is None
    assert g.gpus == {"a100": 4, "h100": 8} and g.gpus_total == {"a100": 16, "h100": 8}
    assert g.max_gpus() == 8 and g.max_gpus("a100") == 4 and g.nodes_idle == 4
    d = parts["debug"]
    assert not d.is_up and d.gpus == {"gpu": 2} and d.max_gpus() == 2 and d.gpu_types == []


# sacct -X -n -P --delimiter=DELIM (format of SACCT_FIELDS) as printed by 24.11 with accounting on.
SACCT = (
    D.join(["17", "spawner-alice", "alice", "CANCELLED by 2001", "None", "node01", "gpu", "00:05:01", "2-00:00:00",
            "2026-11-25T10:00:00", "2026-11-25T09:59:58", "2026-11-25T10:05:01",
            "billing=4,cpu=4,gres/gpu:a100=2,gres/gpu=2,mem=16G,node=1", "0:15", "/home/alice", "", "4", "proj1"])
    + "\n"
    + D.join(["20", "cell", "alice", "COMPLETED", "None", "node02", "cpu", "00:00:03", "01:00:00",
              "2026-11-25T10:10:00", "2026-11-25T10:09:59", "2026-11-25T10:10:03", "billing=1,cpu=1,mem=1G,node=1",
              "0:0", "/home/alice", "jupyter-hpc:kind=cell", "1", "proj1"])
    + "\n"
    + D.join(["20.batch", "batch", "", "COMPLETED", "", "node02", "", "00:00:03", "", "2026-11-25T10:10:00",
              "2026-11-25T10:10:00", "2026-11-25T10:10:03", "cpu=1,mem=1G,node=1", "0:0", "", "", "1", "proj1"])
    + "\n"
    + D.join(["21", "oom", "bob", "OUT_OF_MEMORY", "None", "node02", "cpu", "00:01:00", "UNLIMITED", "Unknown",
              "2026-11-25T10:09:59", "Unknown", "", "0:125", "/home/bob", "", "1", ""])
    + "\n"
)


def test_sacct_argv_and_parse():
    argv = slurm.sacct_argv(["17", 20])
    assert argv[0] == "sacct" and "--jobs=17,20" in argv and "--parsable2" in argv
    with pytest.raises(ValidationError):
        slurm.sacct_argv([])
    jobs = slurm.parse_sacct(SACCT)
    assert set(jobs) == {"17", "20", "21"}
    assert jobs["17"].state == "CANCELLED" and jobs["17"].gpus == {"a100": 2} and jobs["17"].source == "sacct"
    assert jobs["20"].kind == "cell" and jobs["20"].exit_code == 0 and jobs["20"].elapsed == 3
    assert jobs["21"].state == "OUT_OF_MEMORY" and jobs["21"].start_time is None and jobs["21"].time_limit is None
    assert slurm.parse_sacct("") == {}


def test_accounting_disabled_message():
    assert slurm.is_accounting_disabled("Slurm accounting storage is disabled\n")
    assert not slurm.is_accounting_disabled("sacct: error: Invalid field requested")


def test_parse_sbatch():
    assert slurm.parse_sbatch("42\n") == "42"
    assert slurm.parse_sbatch("42;cluster1\n") == "42"
    assert slurm.parse_sbatch("sbatch: warning: x\n43\n") == "43"
    with pytest.raises(ValueError):
        slurm.parse_sbatch("Submitted nothing")


def test_job_request_validated_and_argv():
    req = JobRequest.validated(partition="gpu", time="90", cpus="2", memory="2G", gpus=1, gpu_type="tesla",
                               exclusive="true", job_name="nb", output="/home/alice/out-%j.txt",
                               workdir="/home/alice", comment=slurm.make_comment(kind="server"), account="proj")
    argv = slurm.sbatch_argv(req)
    assert argv[:2] == ["sbatch", "--parsable"]
    for opt in ("--partition=gpu", "--time=01:30:00", "--cpus-per-task=2", "--mem=2048M", "--gres=gpu:tesla:1",
                "--exclusive", "--job-name=nb", "--output=/home/alice/out-%j.txt", "--chdir=/home/alice",
                "--comment=jupyter-hpc:kind=server", "--account=proj"):
        assert opt in argv
    plain = slurm.sbatch_argv(JobRequest.validated(gpus=2))
    assert "--gres=gpu:2" in plain and not any(a.startswith("--partition") for a in plain)
    assert not any(a.startswith("--gres") for a in slurm.sbatch_argv(JobRequest.validated()))


@pytest.mark.parametrize(
    "field,value",
    [
        ("partition", "gpu;rm"),
        ("partition", "-p"),
        ("partition", "gpu\nx"),
        ("partition", "$(id)"),
        ("partition", "`id`"),
        ("account", "a b"),
        ("time", "abc"),
        ("time", "-1"),
        ("time", "1:99:00"),
        ("memory", "1Q"),
        ("memory", "-5G"),
        ("cpus", "0"),
        ("cpus", "two"),
        ("gpus", 10000),
        ("gpus", "-1"),
        ("gpu_type", "a100;x"),
        ("job_name", "x\ny"),
        ("job_name", "--wrap=id"),
        ("output", "relative/out"),
        ("output", "/tmp/a\nb"),
        ("output", "/tmp/../etc/x"),
        ("workdir", "/tmp/\x00"),
        ("comment", "x;y"),
        ("comment", "$(id)"),
        ("exclusive", "maybe"),
    ],
)
def test_job_request_refuses(field, value):
    with pytest.raises(ValidationError) as e:
        JobRequest.validated(**{field: value})
    assert e.value.field


def test_job_request_limits():
    with pytest.raises(ValidationError, match="limit"):
        JobRequest.validated(time="2-00:00:00", max_time_minutes=60)
    with pytest.raises(ValidationError):
        JobRequest.validated(gpus=3, max_gpus=2)
    with pytest.raises(ValidationError):
        JobRequest.validated(memory="20G", max_memory_mb=16000)


def test_sbatch_argv_rechecks_unvalidated_request():
    with pytest.raises(ValidationError):
        slurm.sbatch_argv(JobRequest(partition="x --wrap=id"))
    with pytest.raises(ValidationError):
        slurm.sbatch_argv(JobRequest(comment="a\nb"))


def test_batch_script_quotes_everything():
    script = slurm.batch_script(
        [["echo", "a b", "$(id)", "`id`", "x;y", "'q'"], Line("echo fixed")],
        exports={"MY_VAR": "va'lue $HOME"},
        directives=["--signal=B:TERM@60"],
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --signal=B:TERM@60" in lines and "set -euo pipefail" in lines
    cmd = [l for l in lines if l.startswith("echo 'a b'")][0]
    assert shlex.split(cmd) == ["echo", "a b", "$(id)", "`id`", "x;y", "'q'"]
    exp = [l for l in lines if l.startswith("export MY_VAR=")][0]
    assert shlex.split(exp[len("export "):]) == ["MY_VAR=va'lue $HOME"]
    with pytest.raises(TypeError):
        slurm.batch_script(["echo $(id)"])
    with pytest.raises(ValidationError):
        slurm.batch_script([], exports={"bad-name": "x"})
    with pytest.raises(ValidationError):
        slurm.batch_script([], directives=["--x\n#SBATCH --y"])


def test_comments():
    c = slurm.make_comment(kind="cell", image="site:notebook.sif", skip=None)
    assert c == "jupyter-hpc:kind=cell,image=site:notebook.sif"
    assert slurm.parse_comment(c) == {"kind": "cell", "image": "site:notebook.sif"}
    assert slurm.parse_comment(c + ",host=n1,port=2345") == {"kind": "cell", "image": "site:notebook.sif",
                                                              "host": "n1", "port": "2345"}
    assert slurm.parse_comment("jupyter-hpc:n1.cluster:8888") == {"host": "n1.cluster", "port": "8888"}
    assert slurm.parse_comment("user comment") == {}
    assert slurm.parse_comment(None) == {}
    with pytest.raises(ValidationError):
        slurm.make_comment(kind="a b")
    with pytest.raises(ValidationError):
        slurm.make_comment(kind="x,host=evil")
    info = JobInfo("1", comment="jupyter-hpc:kind=s,host=bad host,port=1")
    assert info.endpoint is None
    assert JobInfo("1", comment="jupyter-hpc:kind=s,host=n1,port=99999").endpoint is None


def test_scancel_scontrol_argv():
    assert slurm.scancel_argv("12") == ["scancel", "12"]
    assert slurm.scancel_argv(12, signal="TERM") == ["scancel", "--signal=TERM", "12"]
    with pytest.raises(ValidationError):
        slurm.scancel_argv("12 13")
    with pytest.raises(ValidationError):
        slurm.scancel_argv("1", signal="KILL;x")
    assert slurm.scontrol_comment_argv(5, "jupyter-hpc:kind=x") == [
        "scontrol", "update", "JobId=5", "Comment=jupyter-hpc:kind=x"]


def test_sstat():
    argv = slurm.sstat_argv(7)
    assert argv[0] == "sstat" and "--jobs=7" in argv and "--allsteps" in argv
    text = "7.batch|00:01:05|102400K|51200K|1|204800K\n7.0|00:10:00|2G|1G|4|3G\n"
    st = slurm.parse_sstat(text, "7")
    assert st.cpu_seconds == 600 and st.max_rss_mb == 2048 and st.tasks == 5 and st.steps == ["7.batch", "7.0"]
    # jobacct_gather/none (testbed): garbage CPU time, zeros
    st = slurm.parse_sstat("7.batch|213503982334-14:25:51|0|0|0|0\n", "7")
    assert st.cpu_seconds is None and st.max_rss_mb == 0
    assert slurm.parse_sstat("", "7") is None


def test_expand_nodelist():
    assert slurm.expand_nodelist("n[01-03,07],gpu1") == ["n01", "n02", "n03", "n07", "gpu1"]
    assert slurm.expand_nodelist("vm") == ["vm"]


def test_pending_problem():
    assert "fit the partition" in JobInfo("1", state="PENDING", reason="PartitionConfig").pending_problem
    assert JobInfo("1", state="PENDING", reason="(ReqNodeNotAvail, Reserved for maintenance)").pending_problem
    assert JobInfo("1", state="PENDING", reason="Resources").pending_problem is None
    assert JobInfo("1", state="RUNNING", reason="PartitionConfig").pending_problem is None
