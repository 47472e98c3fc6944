"""`irrigation keys ...`, run as an operator would: a real process on the test database."""

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.api import bearer
from tests.support.problems import assert_problem

# Real `irrigation keys` processes (seconds each): left out of `make test-quick`.
pytestmark = pytest.mark.slow

IRRIGATION = Path(sys.executable).with_name("irrigation")


async def _run(database_url: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IRRIGATION_")},
        "IRRIGATION_DATABASE_URL": database_url,
    }
    # A scratch working directory: no `.env` nor `.data/stack.json` of the checkout applies.
    process = await asyncio.create_subprocess_exec(
        str(IRRIGATION),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_keys_create_prints_only_a_key_that_works_against_the_api(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    code, out, err = await _run(
        database_url, tmp_path, "keys", "create", "--site", "farm", "--scopes", "admin",
        "--create-site",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("irr_")
    assert out.endswith("\n")
    assert out.count("\n") == 1
    key = out.removesuffix("\n")
    assert key.strip() == key

    site = await client.get("/v1/sites/current", headers=bearer(key))
    assert site.status_code == 200, site.text
    assert site.json()["name"] == "farm"
    zone = await client.post(
        "/v1/zones", json={"name": "North", "timezone": "UTC"}, headers=bearer(key)
    )
    assert zone.status_code == 201, zone.text


async def test_keys_create_for_an_unknown_site_without_create_site_fails_on_stderr(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    code, out, err = await _run(
        database_url, tmp_path, "keys", "create", "--site", "nowhere", "--scopes", "read"
    )
    assert code != 0
    assert out == ""
    assert "nowhere" in err
    assert "--create-site" in err
    # Nothing was made: the site still does not exist.
    code, out, err = await _run(database_url, tmp_path, "keys", "list", "--site", "nowhere")
    assert code != 0
    assert "nowhere" in err


async def test_keys_list_prints_json_lines_without_secrets_and_revoke_makes_the_key_401(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    async def create(site: str, scopes: str) -> str:
        code, out, err = await _run(
            database_url, tmp_path, "keys", "create", "--site", site, "--scopes", scopes,
            "--create-site",
        )  # fmt: skip
        assert code == 0, err
        return out.strip()

    admin = await create("farm", "admin")
    # Concurrently: each run is a cold process start, most of this test's time.
    reader, neighbour = await asyncio.gather(
        create("farm", "read,ingest"), create("orchard", "admin")
    )

    code, out, err = await _run(database_url, tmp_path, "keys", "list", "--site", "farm")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["scopes"] for row in rows] == [["admin"], ["ingest", "read"]]
    for row in rows:
        assert "key" not in row
        assert "key_hash" not in row
        assert row["revoked_at"] is None
    for secret in (admin, reader):
        assert secret not in out
        assert secret[12:] not in out
    assert rows[1]["prefix"] == reader[:12]

    # A key id of another site is not found under this one, and stays valid.
    listed = await client.get("/v1/api-keys", headers=bearer(neighbour))
    neighbour_id = listed.json()["items"][0]["id"]
    code, out, err = await _run(
        database_url, tmp_path, "keys", "revoke", neighbour_id, "--site", "farm"
    )
    assert code != 0
    assert "not found" in err
    assert (await client.get("/v1/zones", headers=bearer(neighbour))).status_code == 200

    assert (await client.get("/v1/zones", headers=bearer(reader))).status_code == 200
    code, out, err = await _run(
        database_url, tmp_path, "keys", "revoke", rows[1]["id"], "--site", "farm"
    )
    assert code == 0, err
    refused = await client.get("/v1/zones", headers=bearer(reader))
    assert_problem(refused, 401, "unauthorized")
    assert (await client.get("/v1/zones", headers=bearer(admin))).status_code == 200
