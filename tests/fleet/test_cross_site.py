"""Tenancy: a key of site A can neither see, change nor delete site B's objects, nor tell
whether they exist; a reference to B's objects from A is refused like a missing one."""

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.fleet.conftest import Fleet
from tests.support.api import Headers
from tests.support.factories import make_zone
from tests.support.problems import assert_invalid, assert_problem

RESOURCES = [
    ("/v1/zones", "zone"),
    ("/v1/water-sources", "water_source"),
    ("/v1/pumps", "pump"),
    ("/v1/sensors", "sensor"),
]


def _without(response: httpx.Response, sent_id: str) -> Any:
    """The body with the id the caller sent blanked out, to compare two answers."""
    return json.loads(response.text.replace(sent_id, "<id>"))


async def test_a_cannot_get_patch_or_delete_bs_objects_and_gets_the_same_404_as_for_none(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    fleet: Fleet,
    other_fleet: Fleet,
    subtests: pytest.Subtests,
) -> None:
    del fleet  # site A owns objects too, so its key is not simply empty-handed
    for path, key in RESOURCES:
        theirs = f"{path}/{other_fleet[key]['id']}"
        nobody = f"{path}/{uuid.uuid4()}"
        attempts: list[tuple[str, dict[str, Any] | None]] = [
            ("GET", None),
            ("PATCH", {"version": 1, "name": "Hijacked"}),
            ("DELETE", None),
        ]
        for method, body in attempts:
            with subtests.test(resource=key, method=method):
                answer = await client.request(method, theirs, json=body, headers=admin)
                missing = await client.request(method, nobody, json=body, headers=admin)
                problem = assert_problem(answer, 404, "not_found")
                assert problem == assert_problem(missing, 404, "not_found")
                assert other_fleet[key]["name"] not in answer.text
        with subtests.test(resource=key, method="GET by owner"):
            still = await client.get(theirs, headers=other_admin)
            assert still.json() == other_fleet[key]


async def test_lists_of_a_never_show_bs_objects(
    client: httpx.AsyncClient,
    admin: Headers,
    fleet: Fleet,
    other_fleet: Fleet,
    subtests: pytest.Subtests,
) -> None:
    for path, key in RESOURCES:
        with subtests.test(resource=key):
            response = await client.get(path, params={"limit": 500}, headers=admin)
            assert response.status_code == 200
            assert [item["id"] for item in response.json()["items"]] == [fleet[key]["id"]]
            assert other_fleet[key]["id"] not in response.text


async def test_filters_and_cursors_of_a_never_reach_bs_rows(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    fleet: Fleet,
    other_fleet: Fleet,
) -> None:
    del fleet
    for path, params in [
        ("/v1/pumps", {"zone_id": other_fleet["zone"]["id"]}),
        ("/v1/pumps", {"water_source_id": other_fleet["water_source"]["id"]}),
        ("/v1/sensors", {"zone_id": other_fleet["zone"]["id"]}),
    ]:
        response = await client.get(path, params=params, headers=admin)
        assert response.json() == {"items": [], "next_cursor": None}
    # A cursor taken from B's list pages through A's rows only.
    later = await make_zone(client, other_admin, "B2")
    first = (await client.get("/v1/zones", params={"limit": 1}, headers=other_admin)).json()
    response = await client.get("/v1/zones", params={"cursor": first["next_cursor"]}, headers=admin)
    assert response.status_code == 200
    assert response.json()["items"] == []  # A's only zone precedes the cursor's position
    assert later["id"] not in response.text


async def test_a_naming_bs_zone_or_water_source_is_refused_like_a_missing_one(
    client: httpx.AsyncClient,
    admin: Headers,
    fleet: Fleet,
    other_fleet: Fleet,
    subtests: pytest.Subtests,
) -> None:
    zone = fleet["zone"]["id"]
    pump, sensor = fleet["pump"], fleet["sensor"]
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        # (name, method, url, body without the foreign reference)
        ("new pump in B's zone", "POST", "/v1/pumps", {"name": "P", "hardware_id": "relay-9"}),
        (
            "new pump on B's source",
            "POST",
            "/v1/pumps",
            {"name": "P", "hardware_id": "relay-9", "zone_id": zone},
        ),
        (
            "new sensor in B's zone",
            "POST",
            "/v1/sensors",
            {"name": "S", "kind": "rain", "unit": "mm"},
        ),
        ("pump moved to B's zone", "PATCH", f"/v1/pumps/{pump['id']}", {"version": 1}),
        (
            "pump moved to B's source",
            "PATCH",
            f"/v1/pumps/{pump['id']}",
            {"version": 1, "zone_id": zone},
        ),
        ("sensor moved to B's zone", "PATCH", f"/v1/sensors/{sensor['id']}", {"version": 1}),
    ]
    for name, method, url, base in cases:
        field = "water_source_id" if "source" in name else "zone_id"
        foreign = other_fleet["water_source" if field == "water_source_id" else "zone"]["id"]
        made_up = str(uuid.uuid4())
        with subtests.test(name):
            theirs = await client.request(method, url, json={**base, field: foreign}, headers=admin)
            nobody = await client.request(method, url, json={**base, field: made_up}, headers=admin)
            assert_invalid(theirs, f"body.{field}")
            assert_invalid(nobody, f"body.{field}")
            assert _without(theirs, foreign) == _without(nobody, made_up)
            assert other_fleet["zone"]["name"] not in theirs.text
    # Nothing of A changed, and A gained nothing.
    assert (await client.get(f"/v1/pumps/{pump['id']}", headers=admin)).json() == pump
    assert (await client.get(f"/v1/sensors/{sensor['id']}", headers=admin)).json() == sensor
    pumps = (await client.get("/v1/pumps", headers=admin)).json()["items"]
    assert [p["id"] for p in pumps] == [pump["id"]]
