"""Optimistic locking: every PATCH names the version it read; a stale one is refused."""

import asyncio

import httpx
import pytest

from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.problems import assert_invalid, assert_problem

# (collection path, fleet fixture key): every versioned resource.
RESOURCES = [
    ("/v1/zones", "zone"),
    ("/v1/water-sources", "water_source"),
    ("/v1/pumps", "pump"),
    ("/v1/sensors", "sensor"),
]


async def test_second_operator_patching_the_same_version_gets_409_stale_version(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    for path, key in RESOURCES:
        with subtests.test(key):
            url = f"{path}/{fleet[key]['id']}"
            first = await client.patch(url, json={"version": 1, "name": "First"}, headers=admin)
            assert first.status_code == 200, first.text
            assert first.json()["version"] == 2

            second = await client.patch(url, json={"version": 1, "name": "Second"}, headers=admin)
            body = assert_problem(second, 409, "stale_version")
            assert body["current_version"] == 2

            now = (await client.get(url, headers=admin)).json()
            assert now == first.json()
            assert now["name"] == "First"


async def test_concurrent_patches_of_one_version_let_exactly_one_win(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    for path, key in RESOURCES:
        with subtests.test(key):
            url = f"{path}/{fleet[key]['id']}"
            answers = await asyncio.gather(
                *(
                    client.patch(url, json={"version": 1, "name": f"Op {i}"}, headers=admin)
                    for i in range(4)
                )
            )
            statuses = sorted(a.status_code for a in answers)
            assert statuses == [200, 409, 409, 409], [a.text for a in answers]
            for loser in (a for a in answers if a.status_code == 409):
                assert_problem(loser, 409, "stale_version")
            winner = next(a.json() for a in answers if a.status_code == 200)
            assert winner["version"] == 2
            assert (await client.get(url, headers=admin)).json() == winner


async def test_patch_without_body_version_or_if_match_is_428_version_required(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    for path, key in RESOURCES:
        with subtests.test(key):
            url = f"{path}/{fleet[key]['id']}"
            response = await client.patch(url, json={"name": "Renamed"}, headers=admin)
            assert_problem(response, 428, "version_required")
            assert (await client.get(url, headers=admin)).json() == fleet[key]


async def test_patch_with_if_match_instead_of_body_version_is_accepted(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    for path, key in RESOURCES:
        url = f"{path}/{fleet[key]['id']}"
        # Each form in turn, each naming the version the previous one produced.
        for version, form in enumerate(["{}", '"{}"', 'W/"{}"'], start=1):
            with subtests.test(key=key, form=form):
                response = await client.patch(
                    url,
                    json={"name": f"Renamed {version}"},
                    headers={**admin, "If-Match": form.format(version)},
                )
                assert response.status_code == 200, response.text
                assert response.json()["version"] == version + 1
                assert response.json()["name"] == f"Renamed {version}"


async def test_stale_if_match_or_a_future_version_is_409_and_changes_nothing(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet
) -> None:
    url = f"/v1/pumps/{fleet['pump']['id']}"
    moved = await client.patch(url, json={"version": 1, "enabled": False}, headers=admin)
    assert moved.status_code == 200
    stale = await client.patch(url, json={"name": "X"}, headers={**admin, "If-Match": '"1"'})
    assert_problem(stale, 409, "stale_version")
    future = await client.patch(url, json={"version": 7, "name": "X"}, headers=admin)
    assert_problem(future, 409, "stale_version")
    assert (await client.get(url, headers=admin)).json() == moved.json()


async def test_malformed_version_is_422_not_500(
    client: httpx.AsyncClient, admin: Headers, fleet: Fleet, subtests: pytest.Subtests
) -> None:
    url = f"/v1/zones/{fleet['zone']['id']}"
    # Header values arrive as Latin-1: b"\xb2" is "²", a digit to str.isdigit() but not to int().
    for if_match in ["abc", "0", "*", "-1", '"2147483648"', "1.5", b"\xb2", b"\xbd"]:
        with subtests.test(if_match=if_match):
            headers: dict[str, str | bytes] = {**admin, "If-Match": if_match}
            response = await client.patch(url, json={"name": "X"}, headers=headers)
            assert_invalid(response, "header.if-match")
    for version in [0, -1, 2**31, "one", 1.5]:
        with subtests.test(version=version):
            response = await client.patch(url, json={"version": version}, headers=admin)
            assert_invalid(response, "body.version")
    assert (await client.get(url, headers=admin)).json() == fleet["zone"]
