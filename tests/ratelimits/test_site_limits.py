"""A site's admin sets the site's own limits per class (`/v1/sites/current/rate-limits`):
lower than the deployment's, at once for every key of the site, never for another site."""

from typing import Any

import pytest

from tests.ratelimits.conftest import Limited, states
from tests.support.api import Headers, bearer
from tests.support.factories import MakeKey
from tests.support.problems import assert_problem

PATH = "/v1/sites/current/rate-limits"
DEPLOYMENT = {
    "read": "1200/minute",
    "write": "600/minute",
    "ingest": "600000/minute",
    "control": "300/minute",
    "expensive": "15/minute",
}
NONE_SET = dict.fromkeys(DEPLOYMENT)


async def test_without_its_own_limits_a_site_has_the_deployment_defaults(
    limited: Limited, admin: Headers
) -> None:
    client = await limited()
    answer = await client.get(PATH, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"site": NONE_SET, "deployment": DEPLOYMENT, "effective": DEPLOYMENT}


async def test_a_lower_site_limit_holds_at_once_for_every_key_of_the_site_only(
    limited: Limited, make_key: MakeKey, admin: Headers, other_admin: Headers
) -> None:
    client = await limited()
    reader = bearer(await make_key("read"))

    put = await client.put(PATH, json={"read": "2/minute"}, headers=admin)

    assert put.status_code == 200, put.text
    assert put.json()["site"] == {**NONE_SET, "read": "2/minute"}
    assert put.json()["effective"] == {**DEPLOYMENT, "read": "2/minute"}
    assert (await client.get(PATH, headers=admin)).json() == put.json()
    codes = [(await client.get("/v1/zones", headers=reader)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    other = await client.get("/v1/zones", headers=other_admin)
    assert other.status_code == 200
    assert states(other)["read"][0] == 1199


async def test_null_gives_a_class_back_the_deployment_limit(
    limited: Limited, admin: Headers
) -> None:
    client = await limited()
    await client.put(PATH, json={"read": "100/minute", "write": "10/minute"}, headers=admin)

    put = await client.put(PATH, json={"read": None}, headers=admin)

    assert put.json()["site"] == NONE_SET
    answer = await client.get("/v1/zones", headers=admin)
    assert answer.headers["RateLimit-Policy"] == '"read";q=1200;w=60'


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"read": "often"}, "body.read"),
        ({"write": "0/minute"}, "body.write"),
        ({"control": "5/minute;100/hour"}, "body.control"),
        ({"expensive": 15}, "body.expensive"),
        ({"ingest": "10/fortnight"}, "body.ingest"),
        ({"everything": "1/second"}, "body.everything"),
    ],
)
async def test_a_limit_that_cannot_be_read_is_422(
    limited: Limited, admin: Headers, body: dict[str, Any], path: str
) -> None:
    client = await limited()
    refused = await client.put(PATH, json=body, headers=admin)
    problem = assert_problem(refused, 422, "validation_error")
    assert [e["path"] for e in problem["errors"]] == [path]
    assert (await client.get(PATH, headers=admin)).json()["site"] == NONE_SET


async def test_a_site_may_not_raise_a_limit_above_what_the_deployment_allows(
    limited: Limited, admin: Headers
) -> None:
    strict = await limited()
    refused = await strict.put(PATH, json={"expensive": "1/second"}, headers=admin)
    problem = assert_problem(refused, 422, "rate_limit_too_high")
    assert problem["errors"][0]["path"] == "body.expensive"

    generous = await limited(rate_limit_site_max_factor=10)
    allowed = await generous.put(PATH, json={"expensive": "150/minute"}, headers=admin)
    assert allowed.status_code == 200, allowed.text
    over = await generous.put(PATH, json={"expensive": "151/minute"}, headers=admin)
    assert_problem(over, 422, "rate_limit_too_high")


async def test_only_an_admin_key_sees_or_sets_the_limits(
    limited: Limited, make_key: MakeKey
) -> None:
    client = await limited()
    reader = bearer(await make_key("read", "control", "ingest"))
    assert_problem(await client.get(PATH, headers=reader), 403, "insufficient_scope")
    refused = await client.put(PATH, json={"read": "1/minute"}, headers=reader)
    assert_problem(refused, 403, "insufficient_scope")
