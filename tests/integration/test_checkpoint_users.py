"""Checkpoints are per user, against a real gateway with two users (per-user tokens), real
sandboxed kernels (bubblewrap) and a real S3 server (moto).

Each owner's L1 is a directory of its own (owned by its kernels' uid, mode 0700) that only its
own kernels' sandboxes mount; L2 is a prefix of its own, reached by kernels only through the
gateway with a token that names their owner (the S3 credentials never enter a kernel). Ana
saves; bob tries to list, read, overwrite and resume her checkpoint by name, by ``../``, by a
symlink, through the API and from inside his kernel, and gets nothing; ana resumes hers in
another kernel, in a job, and from L2 once her L1 is gone.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sandbox import probe
from tests.support.gateway import Gateway
from tests.support.kernel_ws import printed_json
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

WHY_NOT = probe()
if WHY_NOT is not None:  # the sandbox tier says so loudly (and fails in CI); this one needs it
    pytest.fail(f"bubblewrap cannot run here: {WHY_NOT}", pytrace=False)

ANA = "ana-token-" + "a" * 24
BOB = "bob-token-" + "b" * 24
TOKENS = {"ana": ANA, "bob": BOB}
BODY_LIMIT = 4 * 2**20  # the gateway's request body limit; a checkpoint file is not held to it


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, s3: dict[str, Any]
) -> Iterator[tuple[Gateway, Path]]:
    tmp = tmp_path_factory.mktemp("users")
    l1 = tmp / "l1"
    env = {
        "CUMULUS_CHECKPOINT_DIR": str(l1),
        "CUMULUS_CHECKPOINT_URL": "s3://ckpt/runs",
        "CUMULUS_CHECKPOINT_OPTIONS": json.dumps(s3),
    }
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        "--LocalRuntime.sandbox=bwrap", "--CumulusKernelManager.launch_timeout=300",
        f"--CumulusIdentityProvider.user_tokens={json.dumps({ANA: 'ana', BOB: 'bob'})}",
        f"--ServerApp.max_body_size={BODY_LIMIT}",  # checkpoints stream past it
        env=env,
    )  # fmt: skip
    try:
        yield gw, l1
    finally:
        gw.stop()


def call(gw: Gateway, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} | kwargs.pop("headers", {})
    return httpx.request(method, gw.url + path, headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def kernels(setup: tuple[Gateway, Path]) -> Iterator[dict[str, str]]:
    """A kernel of ana's and one of bob's, each started with its owner's own token."""
    gw, _ = setup
    ids = {}
    try:
        for user, token in TOKENS.items():
            made = call(gw, "POST", "/api/kernels", token, json={"env": {"KERNEL_GPU": "0.1"}})
            assert made.status_code == 201, made.text
            ids[user] = made.json()["id"]
        yield ids
    finally:
        for user, kernel_id in ids.items():
            call(gw, "DELETE", f"/api/kernels/{kernel_id}", TOKENS[user])


def run(gw: Gateway, user: str, kernel_id: str, code: str) -> Any:
    """What ``code`` printed last (one JSON value), run in ``user``'s kernel."""
    return printed_json(gw.url, TOKENS[user], kernel_id, code)


ATTEMPT = """
import json, os
import cumulus_jupyter.checkpoint as c
def attempt(what):
    try:
        got = what()
    except Exception as exc:
        return "refused: " + type(exc).__name__ + ": " + str(exc)[:120]
    return "GOT: " + repr(got)[:200]
"""


def l2_keys(s3: dict[str, Any]) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    return sorted(fs.find("ckpt/runs"))


@pytest.fixture(scope="module")
def saved(
    setup: tuple[Gateway, Path], kernels: dict[str, str], s3: dict[str, Any]
) -> dict[str, Any]:
    """Ana's checkpoint ``run1`` (on L1 and L2), and where her kernel's L1 is."""
    gw, _ = setup
    return run(gw, "ana", kernels["ana"], ATTEMPT + (
        "m = c.save('run1', {'w': [1, 2, 3], 'step': 5}, variables=True, wait_l2=True)\n"
        "c.save('private', {'step': 1}, variables=True, wait_l2=True)\n"
        "print(json.dumps({'version': m['version'], 'l1': str(c.l1_root()), 'uid': os.getuid(),"
        " 'url': c.l2_url()}))"
    ))  # fmt: skip


def test_each_owners_l1_is_its_own_directory_mode_0700_of_its_uid(
    setup: tuple[Gateway, Path], kernels: dict[str, str], saved: dict[str, Any]
) -> None:
    gw, l1 = setup
    bobs = run(
        gw, "bob", kernels["bob"], ATTEMPT + "print(json.dumps([str(c.l1_root()), os.getuid()]))"
    )
    assert saved["version"] == 1 and Path(saved["l1"]) == l1 / "ana"
    assert Path(bobs[0]) == l1 / "bob" and bobs[1] != saved["uid"]
    for path, uid in ((l1 / "ana", saved["uid"]), (l1 / "bob", bobs[1])):
        info = path.stat()
        assert info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o700
    assert (l1 / "ana" / "run1" / "v1" / "manifest.json").exists()
    assert saved["url"] == "s3://ckpt/runs/ana"  # what the kernel is told: its own prefix


def test_l2_holds_each_owner_under_its_own_prefix(
    saved: dict[str, Any], s3: dict[str, Any]
) -> None:
    keys = l2_keys(s3)
    assert "ckpt/runs/ana/run1/v1/manifest.json" in keys
    assert all(k.startswith("ckpt/runs/ana/") for k in keys), keys
    assert "ckpt/runs/ana/private/v1/manifest.json" in keys


def test_bob_reaches_nothing_of_anas_from_inside_his_kernel(
    setup: tuple[Gateway, Path], kernels: dict[str, str], saved: dict[str, Any]
) -> None:
    gw, l1 = setup
    ana_l1 = saved["l1"]
    code = ATTEMPT + f"ANA_L1 = {ana_l1!r}\nROOT = {str(l1)!r}\n" + """
import httpx
mine = c.l1_root()
endpoint = os.environ["CUMULUS_CHECKPOINT_GATEWAY"]
token = os.environ["CUMULUS_CHECKPOINT_TOKEN"]
def gateway(path, token=token, method="GET", body=None):
    r = httpx.request(method, endpoint + path, content=body,
                      headers={"Authorization": "checkpoint " + token}, timeout=60)
    if r.status_code >= 400:
        raise PermissionError(r.status_code)
    return r.status_code, r.content[:80]
def by_symlink():
    os.makedirs(mine, exist_ok=True)
    link = os.path.join(mine, "run1")
    os.symlink(os.path.join(ANA_L1, "run1"), link)
    try:
        return c.load("run1")
    finally:
        os.unlink(link)
def by_env():
    os.environ["CUMULUS_CHECKPOINT_DIR"] = ANA_L1
    try:
        return c.load("run1")
    finally:
        os.environ["CUMULUS_CHECKPOINT_DIR"] = str(mine)
def listed():
    found = httpx.get(endpoint, headers={"Authorization": "checkpoint " + token}).json()
    if found:
        return found
    raise LookupError("he has no checkpoints")
def forged(owner):
    mac = token.split(".")[1]
    return gateway("/run1", owner.encode().hex() + "." + mac)
def others_in_l1():
    others = [n for n in os.listdir(ROOT) if n != "bob"]  # his own is mounted there
    if others:
        return others
    raise LookupError("only his own L1 is there")
def credentials():
    leaks = {k: v for k, v in os.environ.items() if "testing" in v or "endpoint_url" in v
             or k == "CUMULUS_CHECKPOINT_OPTIONS"}
    if leaks:
        return leaks
    raise LookupError("no L2 credentials in this kernel")
results = {
    "by_name": attempt(lambda: c.load("run1")),
    "versions_by_name": attempt(lambda: c.versions("run1") or c.load("run1", version=1)),
    "by_dotdot": attempt(lambda: c.load("../ana/run1")),
    "by_symlink": attempt(by_symlink),
    "by_env": attempt(by_env),
    "list_her_l1": attempt(lambda: os.listdir(ANA_L1)),
    "list_all_l1": attempt(others_in_l1),
    "read_her_file": attempt(lambda: open(os.path.join(ANA_L1, "run1", "latest")).read()),
    "api_by_name": attempt(lambda: gateway("/run1")),
    "api_her_file": attempt(lambda: gateway("/run1/1/manifest.json")),
    "api_dotdot": attempt(lambda: gateway("/..%2Fana%2Frun1")),
    "api_dotdot_file": attempt(lambda: gateway("/run1/1/..%2F..%2F..%2Fana%2Frun1%2F1%2Fmanifest.json")),
    "api_list": attempt(listed),
    "api_forged_token": attempt(lambda: forged("ana")),
    "overwrite_her_version": attempt(lambda: gateway("/run1/1/0.cloudpickle", method="PUT",
                                                     body=b"not hers")),
    "credentials": attempt(credentials),
}
print(json.dumps(results))
"""  # fmt: skip
    results = run(gw, "bob", kernels["bob"], code)
    taken = {k: v for k, v in results.items() if not v.startswith("refused")}
    taken.pop("overwrite_her_version", None)  # bob may write, but only into his own prefix
    assert not taken, f"attacks that succeeded: {taken}"
    assert results["by_name"].startswith("refused: NotFound: No checkpoint run1 on this host")
    assert results["by_dotdot"].startswith("refused: InvalidArgument")
    # ana's checkpoint is as she saved it, and still hers
    back = run(gw, "ana", kernels["ana"], ATTEMPT + "print(json.dumps(c.load('run1')))")
    assert back == {"w": [1, 2, 3], "step": 5}


def test_bobs_writes_land_in_his_own_prefix(
    setup: tuple[Gateway, Path], kernels: dict[str, str], saved: dict[str, Any], s3: dict[str, Any]
) -> None:
    gw, _ = setup
    code = ATTEMPT + (
        "m = c.save('run1', {'mine': True}, variables=True, wait_l2=True)\n"
        "print(json.dumps([m['version'], c.load('run1')]))"
    )
    assert run(gw, "bob", kernels["bob"], code) == [1, {"mine": True}]
    keys = l2_keys(s3)
    assert "ckpt/runs/bob/run1/v1/manifest.json" in keys
    assert "ckpt/runs/ana/run1/v1/manifest.json" in keys
    back = run(gw, "ana", kernels["ana"], ATTEMPT + "print(json.dumps(c.load('run1')))")
    assert back == {"w": [1, 2, 3], "step": 5}
    # a complete version is never rewritten, by its own owner either
    again = run(gw, "bob", kernels["bob"], ATTEMPT + """
import httpx
r = httpx.put(os.environ["CUMULUS_CHECKPOINT_GATEWAY"] + "/run1/1/manifest.json", content=b"{}",
              headers={"Authorization": "checkpoint " + os.environ["CUMULUS_CHECKPOINT_TOKEN"]})
print(json.dumps(r.status_code))""")  # fmt: skip
    assert again == 409


def test_a_checkpoint_larger_than_any_request_body_streams_to_l2_and_back(
    setup: tuple[Gateway, Path], kernels: dict[str, str], s3: dict[str, Any]
) -> None:
    gw, _ = setup
    code = ATTEMPT + f"""
import hashlib, shutil, numpy as np
big = np.random.default_rng(1).random({3 * BODY_LIMIT // 8})  # 3x the body limit
c.save('big', big, wait_l2=True)
shutil.rmtree(os.path.join(str(c.l1_root()), 'big'))  # only L2 has it now
back = c.load('big')
print(json.dumps([hashlib.sha256(big).hexdigest() == hashlib.sha256(back).hexdigest(),
                  int(back.nbytes)]))"""  # fmt: skip
    same, size = run(gw, "ana", kernels["ana"], code)
    assert same and size == 3 * BODY_LIMIT
    assert "ckpt/runs/ana/big/v1/manifest.json" in l2_keys(s3)


def test_through_the_api_each_user_lists_and_reads_only_their_own(
    setup: tuple[Gateway, Path], saved: dict[str, Any]
) -> None:
    gw, _ = setup
    listed = call(gw, "GET", "/api/cumulus/checkpoints", ANA)
    assert listed.status_code == 200 and {"name": "run1", "versions": [1]} in listed.json()
    manifest = call(gw, "GET", "/api/cumulus/checkpoints/run1/1/manifest.json", ANA)
    assert manifest.status_code == 200 and json.loads(manifest.content)["files"].keys() == {
        "w",
        "step",
    }
    for path in ("/api/cumulus/checkpoints/run1/1/manifest.json?owner=ana",  # not the operator
                 "/api/cumulus/checkpoints/..%2Fana%2Frun1",
                 "/api/cumulus/checkpoints/run1/1/..%2F..%2Fana%2Frun1%2F1%2Fmanifest.json"):  # fmt: skip
        got = call(gw, "GET", path, BOB)
        assert got.status_code in (400, 404) or b'"mine"' in got.content, (path, got.text)
    assert call(gw, "GET", "/api/cumulus/checkpoints", "not-a-token").status_code == 401
    assert call(gw, "GET", "/api/cumulus/checkpoints/run1", "x", headers={
        "Authorization": "checkpoint 616e61.00"}).status_code == 401  # fmt: skip
    # the operator reaches an owner's by naming it
    operator = call(gw, "GET", "/api/cumulus/checkpoints/run1?owner=ana", gw.token)
    assert operator.status_code == 200 and operator.json() == {"name": "run1", "versions": [1]}


def test_bob_cannot_resume_anas_checkpoint_in_a_job(setup: tuple[Gateway, Path]) -> None:
    gw, _ = setup
    state, log = job(gw, BOB, {"code": "print('epoch', step + 1)", "resume": "private"})
    assert state == "failed" and "epoch" not in log, log
    assert "No checkpoint private on this host or in s3://ckpt/runs/bob" in log


def test_ana_resumes_across_kernels_in_a_job_and_after_her_l1_is_gone(
    setup: tuple[Gateway, Path], saved: dict[str, Any]
) -> None:
    gw, l1 = setup
    made = call(gw, "POST", "/api/kernels", ANA, json={"env": {"KERNEL_GPU": "0.1"}})
    assert made.status_code == 201, made.text
    kernel_id = made.json()["id"]
    try:
        code = ATTEMPT + "print(json.dumps(c.restore('run1', globals())))"
        assert run(gw, "ana", kernel_id, code).endswith("from checkpoint run1 (L1)")
        shutil.rmtree(l1 / "ana" / "run1")  # the host's disk lost it: L2 still has it
        assert run(gw, "ana", kernel_id, code).endswith("from checkpoint run1 (L2)")
    finally:
        call(gw, "DELETE", f"/api/kernels/{kernel_id}", ANA)
    shutil.rmtree(l1 / "ana")
    state, log = job(gw, ANA, {"code": "print('step', step + 1, 'w', w)", "resume": "run1"})
    assert state == "completed", log
    assert "restored w, step from checkpoint run1 (L2)" in log and "step 6 w [1, 2, 3]" in log


def job(gw: Gateway, token: str, body: dict[str, Any]) -> tuple[str, str]:
    """Submit a job as the token's user and follow it to its end: its state and its log."""
    made = call(
        gw, "POST", "/api/cumulus/jobs", token, json=body | {"gpu": "0.1", "duration": "2m"}
    )
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]

    def ended() -> bool:
        return bool(call(gw, "GET", f"/api/cumulus/jobs/{job_id}", token).json()["state"]
                    in ("completed", "failed", "cancelled"))  # fmt: skip

    wait_until(ended, 240, "the job's end")
    state = call(gw, "GET", f"/api/cumulus/jobs/{job_id}", token).json()["state"]
    return state, call(gw, "GET", f"/api/cumulus/jobs/{job_id}/logs", token).text


def test_no_kernel_or_partition_left(setup: tuple[Gateway, Path], kernels: dict[str, str]) -> None:
    gw, _ = setup
    for user, kernel_id in kernels.items():
        assert call(gw, "DELETE", f"/api/kernels/{kernel_id}", TOKENS[user]).status_code == 204
    wait_until(lambda: gw.get("/api/kernels").json() == [], 60, "no kernels")
    wait_until(lambda: gw.get("/api/cumulus/partitions").json() == [], 60, "no partitions")


def test_over_https_kernels_pin_the_gateways_certificate_for_l2(
    tmp_path: Path, s3: dict[str, Any]
) -> None:
    """A gateway serving HTTPS: a job's kernel reaches L2 through it over TLS, trusting only
    the gateway's own certificate (handed to it), and a later job resumes from L2."""
    from tests.support.tls import HttpsGateway, make_pki

    l1 = tmp_path / "l1"
    (tmp_path / "pki").mkdir()
    env = {"CUMULUS_CHECKPOINT_DIR": str(l1), "CUMULUS_CHECKPOINT_URL": "s3://ckpt/tls",
           "CUMULUS_CHECKPOINT_OPTIONS": json.dumps(s3)}  # fmt: skip
    gw = HttpsGateway(tmp_path / "gw", make_pki(tmp_path / "pki"), "--LocalRuntime.sandbox=bwrap",
                      "--CumulusKernelManager.launch_timeout=300", env=env)  # fmt: skip
    try:
        saver = "import cumulus_jupyter.checkpoint as c\nc.save('tls', {'n': 7}, variables=True, wait_l2=True)"
        state, log = https_job(gw, {"code": saver, "owner": "ana"})
        assert state == "completed", log
        shutil.rmtree(l1)
        state, log = https_job(gw, {"code": "print('n is', n)", "resume": "tls", "owner": "ana"})
        assert state == "completed" and "n is 7" in log, log
        assert "restored n from checkpoint tls (L2)" in log
    finally:
        gw.stop()
    assert "ckpt/tls/ana/tls/v1/manifest.json" in l2_keys_under(s3, "ckpt/tls")


def https_job(gw: Any, body: dict[str, Any]) -> tuple[str, str]:
    made = gw.post("/api/cumulus/jobs", body | {"gpu": "0.1", "duration": "2m"})
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]
    wait_until(lambda: gw.get(f"/api/cumulus/jobs/{job_id}").json()["state"]
               in ("completed", "failed", "cancelled"), 240, "the job's end")  # fmt: skip
    return gw.get(f"/api/cumulus/jobs/{job_id}").json()["state"], gw.get(
        f"/api/cumulus/jobs/{job_id}/logs"
    ).text


def l2_keys_under(s3: dict[str, Any], prefix: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    return sorted(fs.find(prefix))
