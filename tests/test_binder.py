"""The Binder recipe, followed in a fresh venv: binder/requirements.txt, binder/postBuild
and its config; then the demo notebook runs against the server it configures.

On Binder the user owns the server but is a JupyterHub user, not a hub admin, so sysmon
refuses them unless the recipe's config sets ``allow_owner``. The server here runs with
a hub-shaped identity provider (a ``hub_auth``, users with a hub model) to show exactly
that: the owner is admitted with the recipe's config and refused without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .servers import ROOT, TOKEN, isolated_env

OWNER = "binder-user"

PROVIDER = f'''
from jupyter_server.auth import IdentityProvider, User


class HubUser(User):
    def __init__(self, model):
        self.hub_user = model
        super().__init__(username=model["name"])


class HubShapedIdentityProvider(IdentityProvider):
    """Like jupyterhub.singleuser's: a token names a hub user model."""

    hub_auth = object()
    models = {{
        {TOKEN!r}: {{"name": {OWNER!r}, "admin": False, "groups": []}},
        "someone-else": {{"name": "eve", "admin": False, "groups": []}},
    }}

    async def get_user(self, handler):
        scheme, _, token = handler.request.headers.get("Authorization", "").partition(" ")
        model = self.models.get(token) if scheme.lower() == "token" else None
        return None if model is None else HubUser(model)
'''

RUN_DEMO = """
import json, sys, nbformat, sysmon_nb
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

nb = nbformat.read(sys.argv[1], as_version=4)
nb.cells.append(new_code_cell('''
import asyncio, sysmon_nb.magic as m
for _ in range(600):
    if m.running and all(len(x.dashboard.samples) >= 2 for x in m.running):
        break
    await asyncio.sleep(0.05)
print(" ".join(f"{x.target.source}:{x.client.state.phase}:{len(x.dashboard.samples)}"
               for x in m.running))
'''))
NotebookClient(nb, timeout=90, kernel_name="python3").execute()
out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
print(json.dumps({"sysmon_nb": sysmon_nb.__file__, "out": out.strip()}))
"""


def fresh_venv(path: Path) -> Path:
    """A new venv whose dependencies resolve to the ones already installed here (a .pth
    line), so the recipe's pip steps run for real but download little."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    (Path(site) / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.timeout(420)
def test_binder_recipe_makes_the_owner_an_admin_and_the_demo_runs(
    jupyter: Any, tmp_path: Path
) -> None:
    venv = tmp_path / "binder-venv"
    python = fresh_venv(venv)
    env = isolated_env(tmp_path, PATH=f"{venv / 'bin'}:{isolated_env(tmp_path)['PATH']}")
    env["PYTHONPATH"] = str(tmp_path / "provider")
    env["JUPYTERHUB_USER"] = OWNER
    (tmp_path / "provider").mkdir()
    (tmp_path / "provider" / "hubshaped.py").write_text(textwrap.dedent(PROVIDER))

    def step(*command: str) -> None:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The recipe, as repo2docker follows it.
    step(str(python), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt")
    step("bash", "binder/postBuild")
    etc = venv / "etc/jupyter"
    assert (etc / "jupyter_sysmon_config.json").exists()
    assert (etc / "jupyter_server_config.d/sysmon_nb.json").exists()  # enables the extension

    provider = "--ServerApp.identity_provider_class=hubshaped.HubShapedIdentityProvider"
    server = jupyter(provider, python=str(python), env=env, interval=None)
    log = server.log_path.read_text()
    assert "owner is admin: True" in log
    assert "every 2.0s" in log  # the recipe's interval, not the default
    # Others are still refused.
    request_as_eve = json.loads(
        subprocess.run(
            [
                str(python), "-c",
                "import json, urllib.request, urllib.error\n"
                f"r = urllib.request.Request('{server.url}sysmon/api/status', headers="
                "{'Authorization': 'token someone-else'})\n"
                "try: urllib.request.urlopen(r)\n"
                "except urllib.error.HTTPError as e: print(json.dumps(e.code))",
            ],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    assert request_as_eve == 403

    # The demo notebook, in a kernel of the Binder venv, finds the server as a hub
    # user's kernel does (JUPYTERHUB_SERVICE_URL and JUPYTERHUB_API_TOKEN).
    kernel_env = dict(env, JUPYTERHUB_SERVICE_URL=server.url, JUPYTERHUB_API_TOKEN=TOKEN)
    result = subprocess.run(
        [str(python), "-c", RUN_DEMO, str(ROOT / "notebooks" / "demo.ipynb")],
        cwd=tmp_path,
        env=kernel_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sysmon_nb"].startswith(str(venv))  # the recipe's install, not ours
    dashboards = report["out"].split()
    assert len(dashboards) == 2
    for dashboard in dashboards:
        source, phase, samples = dashboard.split(":")
        assert (source, phase) == ("JupyterHub", "connected")
        assert int(samples) >= 2


@pytest.mark.timeout(120)
def test_without_the_recipe_config_a_hub_owner_is_refused(jupyter: Any, tmp_path: Path) -> None:
    """What the recipe's config is for: under a hub, owners are not admins by default."""
    (tmp_path / "provider").mkdir()
    (tmp_path / "provider" / "hubshaped.py").write_text(textwrap.dedent(PROVIDER))
    env = isolated_env(tmp_path, PYTHONPATH=str(tmp_path / "provider"), JUPYTERHUB_USER=OWNER)
    provider = "--ServerApp.identity_provider_class=hubshaped.HubShapedIdentityProvider"
    server = jupyter(provider, env=env, ready_path="api/status")
    code, body = server.get("sysmon/api/status")
    assert code == 403
    assert "not an administrator" in json.loads(body)["message"]
    assert server.get("api/status")[0] == 200
