"""Sharing services: request validation, the share store, the job check, credential stripping,
cookie confinement, and the server extension's client when sharing is unavailable.
(The hub service itself is tested against a real JupyterHub in tests/integration/test_share.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from tornado.httputil import HTTPHeaders

from jupyter_hpc import share, sharing
from jupyter_hpc.slurm import JobInfo
from jupyter_hpc.validate import ValidationError


def svc_job(**over) -> JobInfo:
    values = dict(job_id="42", name="jupyter-hpc-service", user="alice", state="RUNNING", nodes="vm",
                  comment="jupyter-hpc:kind=service,name=web,image=site:notebook.sif,host=vm,port=23456")
    values.update(over)
    return JobInfo(**values)


def test_share_request_validation():
    assert sharing.share_request({"users": ["bob", "carol", "bob"], "groups": ["team-a"]}) == (
        ["bob", "carol"], ["team-a"])
    assert sharing.share_request({}) == ([], [])
    for body, field in [
        ([], "body"),
        ({"users": "bob"}, "users"),
        ({"users": ["Bob;id"]}, "users"),
        ({"users": ["-bob"]}, "users"),
        ({"users": ["bob\n"]}, "users"),
        ({"groups": ["a b"]}, "groups"),
        ({"groups": [7]}, "groups"),
        ({"groups": ["x" * 65]}, "groups"),
        ({"users": ["u%d" % i for i in range(sharing.MAX_NAMES + 1)]}, "users"),
        ({"owner": "carol"}, "owner"),
    ]:
        with pytest.raises(ValidationError) as e:
            sharing.share_request(body)
        assert e.value.field == field, body


def test_store_set_remove_and_state_file(tmp_path):
    path = str(tmp_path / "shares.json")
    store = share.ShareStore(path)
    s = store.set("alice", "42", ["bob"], ["team"], name="web")
    assert s.to_dict("/services/jupyter-hpc-share/")["url"] == "/services/jupyter-hpc-share/alice/42/"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store.set("alice", "43", ["carol"], [])
    store.set("bob", "50", ["alice"], [])
    assert [x.job_id for x in store.of_owner("alice")] == ["42", "43"]
    again = share.ShareStore(path)
    again.load()
    assert again.get("alice", "42").users == ["bob"] and again.get("alice", "42").groups == ["team"]
    assert again.remove("alice", "42") is not None and again.remove("alice", "42") is None
    # a tampered state file: invalid entries are dropped
    with open(path, "w") as f:
        json.dump({"shares": [{"owner": "alice;id", "job_id": "1", "users": []},
                              {"owner": "alice", "job_id": "1 2", "users": []},
                              {"owner": "alice", "job_id": "9", "users": ["bob"], "groups": []}]}, f)
    third = share.ShareStore(path)
    third.load()
    assert [(x.owner, x.job_id) for x in third.all()] == [("alice", "9")]


def test_service_target_checks_everything():
    assert share.service_target(svc_job(), "alice") == (("vm", 23456), "")
    cases = [
        (None, "does not know"),
        (svc_job(user="bob"), "does not belong"),
        (svc_job(comment="jupyter-hpc:kind=server,host=vm,port=23456"), "not a jupyter-hpc service"),
        (svc_job(comment="jupyter-hpc:kind=cell,host=vm,port=23456"), "not a jupyter-hpc service"),
        (svc_job(state="COMPLETED"), "not running"),
        (svc_job(state="PENDING", nodes=None), "not running"),
        (svc_job(comment="jupyter-hpc:kind=service,name=web"), "not registered"),
        (svc_job(comment="jupyter-hpc:kind=service,host=othernode,port=22"), "not its node"),
        (svc_job(comment="jupyter-hpc:kind=service,host=vm,port=99999"), "not registered"),
    ]
    for info, reason in cases:
        target, why = share.service_target(info, "alice")
        assert target is None and reason in why, (info, why)


def test_may_visit():
    s = share.Share(owner="alice", job_id="42", users=["bob"], groups=["team"])
    assert share.may_visit(s, "alice", "alice", set())
    assert share.may_visit(None, "alice", "alice", set())  # the owner needs no share
    assert share.may_visit(s, "bob", "alice", set())
    assert share.may_visit(s, "dave", "alice", {"team"})
    assert not share.may_visit(s, "carol", "alice", set())
    assert not share.may_visit(s, "carol", "alice", {"other"})
    assert not share.may_visit(None, "bob", "alice", set())


def test_strip_credentials_and_token_query():
    h = HTTPHeaders({"Authorization": "token hubsecret", "Cookie":
                     "service-jupyter-hpc-share=abc; jupyterhub-session-id=s; _xsrf=x; "
                     "__Host-service-jupyter-hpc-share=y; jupyterhub-hub-login=z; app=kept; theme=dark",
                     "Accept": "text/html"})
    share.strip_credentials(h, {"service-jupyter-hpc-share", "service-jupyter-hpc-share-oauth-state"})
    assert "Authorization" not in h and h["Cookie"] == "app=kept; theme=dark" and h["Accept"] == "text/html"
    h = HTTPHeaders({"Cookie": "jupyterhub-session-id=s"})
    share.strip_credentials(h, set())
    assert "Cookie" not in h
    assert share.strip_token_query("token=abc&x=1&y=") == "x=1&y="
    assert share.strip_token_query("") == ""


def test_confine_cookie():
    prefix = "/services/jupyter-hpc-share/alice/42"
    assert share.confine_cookie("sid=1; Path=/; HttpOnly", prefix) == f"sid=1; HttpOnly; Path={prefix}/"
    assert share.confine_cookie("a=b; Domain=.example.org; path=/api", prefix) == f"a=b; Path={prefix}/api"
    assert share.confine_cookie("a=b", prefix) == f"a=b; Path={prefix}/"
    # a cookie aimed at the hub or another user's server stays below the share
    assert share.confine_cookie("_xsrf=evil; Path=/hub/", prefix).endswith(f"Path={prefix}/hub/")


def test_client_without_hub_or_service_is_unavailable():
    no_hub = sharing.ShareClient("http://127.0.0.1:1/services/jupyter-hpc-share/", "")
    st = asyncio.run(no_hub.status())
    assert st == {"available": False, "reason": sharing.NO_HUB, "service_url": None}
    with pytest.raises(sharing.SharingUnavailable):
        asyncio.run(no_hub.put("42", ["bob"], []))
    no_service = sharing.ShareClient("", "token")
    assert asyncio.run(no_service.status())["reason"] == sharing.NO_SERVICE
    with pytest.raises(sharing.SharingUnavailable):
        asyncio.run(no_service.list())


def test_client_unreachable_service_is_reported():
    client = sharing.ShareClient("http://127.0.0.1:9/services/jupyter-hpc-share", "token", timeout=3)
    assert client.url.endswith("/")
    st = asyncio.run(client.status())
    assert st["available"] is False and "does not answer" in st["reason"]
    with pytest.raises(sharing.ShareServiceError) as e:
        asyncio.run(client.put("42", ["bob"], []))
    assert e.value.status == 502


def test_share_dict():
    d = sharing.share_dict("42", "alice", None, "web")
    assert d == {"job_id": "42", "owner": "alice", "name": "web", "users": [], "groups": [], "shared": False,
                 "url": None}
    d = sharing.share_dict("42", "alice", {"owner": "alice", "users": ["bob"], "groups": [],
                                           "url": "/services/jupyter-hpc-share/alice/42/"})
    assert d["shared"] and d["url"].endswith("/alice/42/")


def test_share_service_defaults(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://10.0.0.5:10123")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/hub-base/services/jupyter-hpc-share/")
    app = share.ShareService()
    assert (app.ip, app.port, app.prefix) == ("10.0.0.5", 10123, "/hub-base/services/jupyter-hpc-share/")
    for name, trait in share.ShareService.class_traits(config=True).items():
        assert trait.help, f"ShareService.{name} has no help"


def test_extension_and_spawner_traits_have_help():
    from jupyter_hpc.extension import HPCExtension
    from jupyter_hpc.spawners import ApptainerSlurmSpawner

    for name in ("vitals_gpu_probe", "vitals_gpu_interval", "vitals_min_window", "share_url", "share_timeout"):
        assert HPCExtension.class_traits()[name].help
    assert ApptainerSlurmSpawner.class_traits()["share_url"].help


def test_spawner_passes_the_share_url_to_the_server():
    from types import SimpleNamespace

    from jupyterhub.objects import Hub

    from jupyter_hpc.spawners import ApptainerSlurmSpawner

    user = SimpleNamespace(name="alice", escaped_name="alice", url="/user/alice/", base_url="/", settings={},
                           server=None, id=1, groups=[])
    url = "http://10.0.0.1:10101/services/jupyter-hpc-share/"
    spawner = ApptainerSlurmSpawner(user=user, hub=Hub(), share_url=url)
    # in the job environment (exported into the container), never on the command line
    assert spawner._container_env()["JUPYTER_HPC_SHARE_URL"] == url
    assert not any(url in a for a in spawner.get_args())
    assert "JUPYTER_HPC_SHARE_URL" not in ApptainerSlurmSpawner(user=user, hub=Hub())._container_env()


def test_share_answers_match_the_openapi_schema():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from server_fixtures import validate_schema

    store = share.ShareStore()
    rec = store.set("alice", "42", ["bob"], ["team"], name="web").to_dict("/services/jupyter-hpc-share/")
    validate_schema(rec, "ShareRecord")
    validate_schema(sharing.share_dict("42", "alice", rec), "Share")
    validate_schema(sharing.share_dict("42", "alice", None), "Share")
    validate_schema({"available": False, "reason": sharing.NO_HUB, "service_url": None}, "Sharing")
    validate_schema({"users": ["bob"], "groups": ["team"]}, "ShareRequest")
