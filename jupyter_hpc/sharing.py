"""The single-user server's side of sharing a service: a client of the ``jupyter-hpc-share`` hub service.

The server extension registers, lists and revokes shares of the user's own service
jobs with the hub service (:mod:`jupyter_hpc.share`), authenticating with the
server's own JupyterHub API token (``$JUPYTERHUB_API_TOKEN``, sent in the
``Authorization`` header only). Without JupyterHub, or without a configured share
service, :meth:`ShareClient.status` says why sharing is unavailable and every
operation raises :class:`SharingUnavailable`: nothing is shared behind the user's back
and nothing pretends to be.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from . import validate
from .validate import ValidationError

log = logging.getLogger(__name__)

NO_HUB = ("sharing needs JupyterHub: this Jupyter server was not started by JupyterHub, "
          "so there is no hub login to give other people")
NO_SERVICE = ("JupyterHub's jupyter-hpc-share service is not configured for this server "
              "(c.HPCExtension.share_url, or JUPYTER_HPC_SHARE_URL in the server's environment)")


MAX_NAMES = 200


def group_name(value: Any) -> str:
    """A JupyterHub group name (:func:`jupyter_hpc.validate.hub_group`)."""
    return validate.hub_group(value, "groups")


def share_request(body: Any) -> Tuple[List[str], List[str]]:
    """``{"users": [...], "groups": [...]}`` -> sorted, de-duplicated, validated lists."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object with 'users' and 'groups' lists")
    unknown = set(body) - {"users", "groups"}
    if unknown:
        raise ValidationError(sorted(unknown)[0], "unknown field (allowed: users, groups)")
    out = []
    for key, check in (("users", validate.username), ("groups", group_name)):
        values = body.get(key) or []
        if not isinstance(values, list):
            raise ValidationError(key, "must be a list of names")
        if len(values) > MAX_NAMES:
            raise ValidationError(key, f"at most {MAX_NAMES} names")
        names = set()
        for v in values:
            try:
                names.add(check(v))
            except ValidationError as e:
                raise ValidationError(key, e.message) from None
        out.append(sorted(names))
    return out[0], out[1]


class SharingUnavailable(Exception):
    """Sharing cannot work here; ``str(e)`` says why."""


class ShareServiceError(Exception):
    """The share service refused a request or did not answer."""

    def __init__(self, status: int, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def hub_token(serverapp=None) -> str:
    """The server's JupyterHub API token ('' outside JupyterHub)."""
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token and serverapp is not None:
        provider = getattr(serverapp, "identity_provider", None)
        token = getattr(getattr(provider, "hub_auth", None), "api_token", "") or ""
    return token


class ShareClient:
    """Talks to the share service at ``url`` (its prefix URL, ending in ``/``) as the server's user."""

    def __init__(self, url: str, token: str, *, timeout: float = 20.0, check_ttl: float = 30.0,
                 logger: Optional[logging.Logger] = None):
        self.url = url if not url or url.endswith("/") else url + "/"
        self.token = token
        self.timeout = timeout
        self.check_ttl = check_ttl
        self.log = logger or log
        self._checked: Optional[tuple] = None  # (monotonic time, status dict)

    def static_reason(self) -> Optional[str]:
        if not self.token:
            return NO_HUB
        if not self.url:
            return NO_SERVICE
        return None

    async def status(self, fresh: bool = False) -> Dict[str, Any]:
        """``{"available", "reason", "service_url"}``; asks the service (cached ``check_ttl`` s)."""
        reason = self.static_reason()
        if reason:
            return {"available": False, "reason": reason, "service_url": None}
        now = time.monotonic()
        if not fresh and self._checked and now - self._checked[0] < self.check_ttl:
            return self._checked[1]
        try:
            info = await self._request("GET", "api/info")
            status = {"available": True, "reason": None, "service_url": info.get("prefix") or None}
        except ShareServiceError as e:
            status = {"available": False, "reason": f"the jupyter-hpc-share service did not accept this server: "
                                                   f"{e.message}", "service_url": None}
        self._checked = (now, status)
        return status

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        reason = self.static_reason()
        if reason:
            raise SharingUnavailable(reason)
        headers = {"Authorization": f"token {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        req = HTTPRequest(self.url + path, method=method, headers=headers, body=data,
                          request_timeout=self.timeout, connect_timeout=min(10.0, self.timeout),
                          follow_redirects=False)
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as e:
            self.log.warning("share service %s does not answer: %s", self.url, e)
            raise ShareServiceError(502, f"the jupyter-hpc-share service does not answer ({e})") from None
        if resp.code == 599:
            raise ShareServiceError(502, f"the jupyter-hpc-share service does not answer ({resp.error})")
        text = resp.body.decode("utf-8", "replace") if resp.body else ""
        payload: Any = None
        if text:
            try:
                payload = json.loads(text)
            except ValueError:
                payload = None
        if resp.code >= 400:
            message = payload.get("message") if isinstance(payload, dict) else None
            field = payload.get("field") if isinstance(payload, dict) else None
            if resp.code in (301, 302, 303, 307, 308):
                message = "the share service asked for a login: check c.HPCExtension.share_url"
            status = resp.code if resp.code in (400, 403, 404, 409) else 502
            raise ShareServiceError(status, message or f"the share service answered HTTP {resp.code}", field)
        if resp.code in (301, 302, 303, 307, 308):
            raise ShareServiceError(502, "the share service redirected the request: check c.HPCExtension.share_url")
        return payload

    async def list(self) -> Dict[str, List[Dict[str, Any]]]:
        data = await self._request("GET", "api/shares") or {}
        return {"shares": list(data.get("shares") or []), "shared_with_me": list(data.get("shared_with_me") or [])}

    async def get(self, job_id: str) -> Optional[Dict[str, Any]]:
        try:
            return await self._request("GET", "api/shares/" + quote(validate.job_id(job_id)))
        except ShareServiceError as e:
            if e.status == 404:
                return None
            raise

    async def put(self, job_id: str, users: List[str], groups: List[str]) -> Dict[str, Any]:
        return await self._request("PUT", "api/shares/" + quote(validate.job_id(job_id)),
                                   {"users": list(users), "groups": list(groups)})

    async def delete(self, job_id: str) -> bool:
        try:
            await self._request("DELETE", "api/shares/" + quote(validate.job_id(job_id)))
        except ShareServiceError as e:
            if e.status == 404:
                return False
            raise
        return True


def share_dict(job_id: str, owner: str, share: Optional[Dict[str, Any]], name: Optional[str] = None) -> Dict[str, Any]:
    """The ``Share`` answer of the REST API (also for a service that is not shared)."""
    share = share or {}
    users = list(share.get("users") or [])
    groups = list(share.get("groups") or [])
    return {
        "job_id": job_id,
        "owner": share.get("owner") or owner,
        "name": share.get("name") or name,
        "users": users,
        "groups": groups,
        "shared": bool(users or groups),
        "url": share.get("url") if (users or groups) else None,
    }
