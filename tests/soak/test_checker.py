"""The offline checker, fed histories built by hand: a clean one gives nothing; each
injected breach gives exactly its own violation, whether the simulator's truth names the
site of each run or (an older simulator) not."""

import dataclasses
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from irrigation.soak import history as h
from irrigation.soak.__main__ import main as judge
from irrigation.soak.checker import (
    CAPACITY,
    COOLDOWN,
    DB_TRUTH,
    MAX_RUNTIME,
    NOT_TERMINAL,
    OVERLAP,
    UNOWNED_RUN,
    Tolerances,
    check,
)

T0 = datetime(2025, 6, 1, 6, 0, tzinfo=UTC)
A, B = "site-a", "site-b"
SHARED = "shared-1"


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


CONFIG = h.Config(
    sites=[h.Site(A, "farm A"), h.Site(B, "farm B")],
    water_sources=[h.WaterSource("ws-a", A, "well A", 1), h.WaterSource("ws-b", B, "well B", 1)],
    pumps=[
        # One hardware_id at both sites: two devices that must never touch each other.
        h.Pump("pa1", A, "A1", SHARED, max_runtime_s=5, cooldown_s=2, water_source_id="ws-a"),
        h.Pump("pa2", A, "A2", "a-2", max_runtime_s=5, cooldown_s=2, water_source_id="ws-a"),
        h.Pump("pb1", B, "B1", SHARED, max_runtime_s=5, cooldown_s=2, water_source_id="ws-b"),
    ],
)


def activation(
    id: str,
    pump_id: str,
    status: str,
    duration_s: int,
    started: float | None = None,
    stopped: float | None = None,
    reached_starting: bool | None = None,
) -> h.Activation:
    site = next(p.site_id for p in CONFIG.pumps if p.id == pump_id)
    return h.Activation(
        id=id,
        site_id=site,
        pump_id=pump_id,
        status=status,
        command_id=f"cmd-{id}",
        sequence=1,
        duration_s=duration_s,
        origin="api_key:test",
        requested_at=t(0),
        started_at=t(started) if started is not None else None,
        stopped_at=t(stopped) if stopped is not None else None,
        stop_cause=None,
        error=None,
        reached_starting=started is not None if reached_starting is None else reached_starting,
    )


def run(
    site: str, hardware_id: str, id: str, start: float, stop: float | None, by: str = "auto_off"
) -> h.TruthRun:
    return h.TruthRun(
        hardware_id=hardware_id,
        command_id=f"cmd-{id}",
        sequence=1,
        started_at=t(start),
        stopped_at=t(stop) if stop is not None else None,
        stopped_by=by if stop is not None else None,
        site_id=site,
    )


def admitted(op_id: int, site: str, pump_id: str, activation_id: str) -> h.Operation:
    return h.Operation(
        id=op_id,
        client=0,
        action="activate",
        site_id=site,
        pump_id=pump_id,
        request={"method": "POST", "path": f"/v1/pumps/{pump_id}/activations"},
        sent_at=t(0),
        answered_at=t(0.01),
        status=202,
        body={"kind": "activation", "id": activation_id},
        activation_id=activation_id,
    )


ACTIVATIONS = [
    activation("a1", "pa1", "completed", 3, started=0, stopped=3),
    activation("a2", "pa2", "completed", 2, started=3.5, stopped=5.5),
    activation("a3", "pa1", "completed", 2, started=6, stopped=8),
    # Stopped by the operator halfway.
    activation("b1", "pb1", "aborted", 3, started=1, stopped=2.5),
    activation("b2", "pb1", "completed", 1, started=5, stopped=6),
    activation("x1", "pa2", "expired", 2),
    activation("x2", "pb1", "failed", 2, reached_starting=True),
]
RUNS = [
    run(A, SHARED, "a1", 0, 3),
    # Same hardware_id, other site, at the same time: another device, another well.
    run(B, SHARED, "b1", 1, 2.5, by="command"),
    run(A, "a-2", "a2", 3.5, 5.5),
    run(B, SHARED, "b2", 5, 6),
    run(A, SHARED, "a3", 6, 8),
]
OPERATIONS = [
    admitted(1, A, "pa1", "a1"),
    admitted(2, B, "pb1", "b1"),
    admitted(3, A, "pa2", "a2"),
    admitted(4, B, "pb1", "b2"),
    admitted(5, A, "pa2", "x1"),
    admitted(6, B, "pb1", "x2"),
    dataclasses.replace(
        admitted(7, A, "pa1", "a3"),
        action="queue",
        body={"kind": "run_request", "id": "rq1"},
        activation_id=None,
        run_request_id="rq1",
    ),
    h.Operation(
        id=8,
        client=1,
        action="activate",
        site_id=A,
        pump_id="pa1",
        request={},
        sent_at=t(1),
        answered_at=t(1.01),
        status=409,
        body={"code": "pump_busy"},
        code="pump_busy",
    ),
]


def clean(
    runs: list[h.TruthRun] | None = None,
    activations: list[h.Activation] | None = None,
    operations: list[h.Operation] | None = None,
) -> h.History:
    return h.History(
        header=h.header(7, {"minutes": 1}, T0),
        config=CONFIG,
        operations=OPERATIONS if operations is None else operations,
        faults=[h.FaultEvent(1, "worker_kill", "worker-0", {}, t(2), None, "killed")],
        final=h.Final(
            read_at=t(30),
            quiescent=True,
            activations=ACTIVATIONS if activations is None else activations,
            run_requests=[h.RunRequestState("rq1", A, "pa1", "started", "a3")],
        ),
        truth=h.Truth(read_at=t(30), runs=RUNS if runs is None else runs),
    )


def legacy(history: h.History) -> h.History:
    """The same history as a simulator without sites reports it: no `site_id` in truth."""
    assert history.truth is not None
    runs = [dataclasses.replace(r, site_id=None) for r in history.truth.runs]
    return dataclasses.replace(history, truth=h.Truth(history.truth.read_at, runs))


def replaced(runs: list[h.TruthRun], id: str, **changes: object) -> list[h.TruthRun]:
    return [
        dataclasses.replace(r, **changes) if r.command_id == f"cmd-{id}" else r  # type: ignore[arg-type]
        for r in runs
    ]


def invariants(history: h.History) -> list[str]:
    return [v.invariant for v in check(history)]


@pytest.mark.parametrize("form", [lambda x: x, legacy], ids=["sites", "legacy"])
def test_a_clean_history_has_no_violation(form: object) -> None:
    assert check(form(clean())) == []  # type: ignore[operator]


INJECTED = {
    # The device started one command twice while it ran.
    "double start": (lambda: clean(runs=[*RUNS, run(A, SHARED, "a1", 1, 2)]), OVERLAP),
    # Ran 5.6 s on a pump capped at 5 s (tolerance 0.5 s).
    "overrun": (lambda: clean(runs=replaced(RUNS, "a3", stopped_at=t(11.6))), MAX_RUNTIME),
    # Started 1 s after the previous stop; the pump rests 2 s.
    "cooldown breach": (
        lambda: clean(runs=replaced(RUNS, "b2", started_at=t(3.5), stopped_at=t(4.5))),
        COOLDOWN,
    ),
    # A2 starts while A1 runs on a well that feeds one pump at a time.
    "capacity breach": (
        lambda: clean(runs=replaced(RUNS, "a2", started_at=t(2), stopped_at=t(4))),
        CAPACITY,
    ),
    "admitted run left non-terminal": (
        lambda: clean(
            activations=[
                a if a.id != "x2" else dataclasses.replace(a, status="queued") for a in ACTIVATIONS
            ]
        ),
        NOT_TERMINAL,
    ),
    "truth run nobody owns": (
        lambda: clean(runs=[*RUNS, run(A, "a-2", "ghost", 20, 21)]),
        UNOWNED_RUN,
    ),
}


@pytest.mark.parametrize("form", [lambda x: x, legacy], ids=["sites", "legacy"])
@pytest.mark.parametrize("name", list(INJECTED))
def test_each_injected_breach_is_flagged_alone(name: str, form: object) -> None:
    make, expected = INJECTED[name]
    found = check(form(make()))  # type: ignore[operator]
    assert [v.invariant for v in found] == [expected], [str(v) for v in found]
    assert found[0].at is not None or expected == NOT_TERMINAL


def test_a_violation_names_the_device_the_activation_and_the_times() -> None:
    [found] = check(clean(runs=replaced(RUNS, "b2", started_at=t(3.5), stopped_at=t(4.5))))
    assert (found.site_id, found.hardware_id, found.activation_id) == (B, SHARED, "b2")
    # From the previous stop to the early start.
    assert (found.at, found.until) == (t(2.5), t(3.5))
    assert "1.000 s after" in found.detail
    assert "cooldown is 2 s" in str(found)


def test_an_admitted_activation_missing_from_the_final_read_is_flagged() -> None:
    history = clean(activations=[a for a in ACTIVATIONS if a.id != "x1"])
    [found] = check(history)
    assert found.invariant == NOT_TERMINAL
    assert found.activation_id == "x1"


def test_a_run_request_still_waiting_at_the_end_is_flagged() -> None:
    history = clean()
    assert history.final is not None
    waiting = [h.RunRequestState("rq1", A, "pa1", "waiting", None)]
    history = dataclasses.replace(
        history, final=dataclasses.replace(history.final, run_requests=waiting)
    )
    assert invariants(history) == [NOT_TERMINAL]


def test_a_stop_from_another_site_cutting_a_run_short_is_a_disagreement() -> None:
    """The defect of issue 15, as a simulator without sites reports it: site B's stop for
    its own pump `shared-1` ended site A's run 2 s in, while A's API went on to report
    the run completed."""
    runs = replaced(RUNS, "a1", stopped_at=t(2), stopped_by="command")
    found = check(legacy(clean(runs=runs)))
    assert [v.invariant for v in found] == [DB_TRUTH]
    assert found[0].activation_id == "a1"
    assert "ran command cmd-a1 for 2.000 s" in found[0].detail


def test_a_run_the_device_ended_early_agrees_when_the_api_saw_it_end() -> None:
    """Reconciliation's case: the device stopped on its own, and the API recorded the
    device's stop time."""
    runs = replaced(RUNS, "a1", stopped_at=t(2), stopped_by="command")
    seen = [dataclasses.replace(a, stopped_at=t(2.2)) if a.id == "a1" else a for a in ACTIVATIONS]
    assert check(clean(runs=runs, activations=seen)) == []
    late = [dataclasses.replace(a, stopped_at=t(2.6)) if a.id == "a1" else a for a in ACTIVATIONS]
    assert invariants(clean(runs=runs, activations=late)) == [DB_TRUTH]


def test_a_run_whose_activation_never_started_is_a_disagreement() -> None:
    assert invariants(clean(runs=[*RUNS, run(A, "a-2", "x1", 20, 21)])) == [DB_TRUTH]


def test_a_completed_activation_with_no_run_in_truth_is_a_disagreement() -> None:
    assert invariants(clean(runs=[r for r in RUNS if r.command_id != "cmd-a2"])) == [DB_TRUTH]


def test_a_run_on_another_sites_device_is_a_disagreement() -> None:
    runs = replaced(RUNS, "b2", site_id=A, started_at=t(20), stopped_at=t(21))
    found = check(clean(runs=runs))
    assert [v.invariant for v in found] == [DB_TRUTH]
    assert "its activation's pump is site-b/shared-1" in found[0].detail


def test_a_device_still_running_at_the_end_is_flagged() -> None:
    found = check(clean(runs=replaced(RUNS, "a3", stopped_at=None, stopped_by=None)))
    # Still on at the read, 24 s after its start: past its cap too.
    assert sorted(v.invariant for v in found) == [DB_TRUTH, MAX_RUNTIME]


def test_tolerances_are_parameters() -> None:
    history = clean(runs=replaced(RUNS, "a3", stopped_at=t(11.3)))  # 5.3 s on a 5 s cap
    assert check(history) == []
    assert [v.invariant for v in check(history, Tolerances(runtime_s=0.1))] == [MAX_RUNTIME]


def test_a_history_survives_its_own_file_format() -> None:
    out = io.StringIO()
    h.Writer(out).write_all(clean())
    read = h.parse(io.StringIO(out.getvalue()))
    assert read == clean()
    assert read.seed == 7


def test_the_reader_accepts_truth_runs_with_and_without_a_site() -> None:
    out = io.StringIO()
    h.Writer(out).write_all(legacy(clean()))
    text = out.getvalue()
    assert '"site_id": "site-a", "hardware_id"' not in text.split('"type": "truth"')[1]
    read = h.parse(io.StringIO(text))
    assert read.truth is not None
    assert {r.site_id for r in read.truth.runs} == {None}
    assert check(read) == []


def test_the_reader_refuses_another_format() -> None:
    with pytest.raises(ValueError, match="not a soak history"):
        h.parse(['{"type": "header", "format": "something-else"}'])
    with pytest.raises(ValueError, match="header and config"):
        h.parse([])


def test_recorded_histories_are_judged_again_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    for path, recorded in ((good, clean()), (bad, clean(runs=[*RUNS, run(A, "a-2", "x", 20, 21)]))):
        with path.open("w") as out:
            h.Writer(out).write_all(recorded)
    assert judge([str(good)]) == 0
    assert judge([str(good), str(bad)]) == 1
    printed = capsys.readouterr().out
    assert f"{bad}: seed 7, 1 violations {{'unowned_run': 1}}" in printed


# Flow budgets: B's well gives 100 L/min to two pumps at once by count.


def with_flows(b2_flow: float | None, b2_runs: tuple[float, float] = (2, 3)) -> h.History:
    """B's well with a flow budget of 100, its pump B1 at 60 L/min and a second pump B2
    (`b2_flow`) that runs over `b2_runs`; B1 runs over 1 .. 2.5 as in the clean history."""
    config = dataclasses.replace(
        CONFIG,
        water_sources=[
            CONFIG.water_sources[0],
            h.WaterSource("ws-b", B, "well B", 2, max_flow_lpm=100),
        ],
        pumps=[
            *(
                dataclasses.replace(p, nominal_flow_lpm=60) if p.id == "pb1" else p
                for p in CONFIG.pumps
            ),
            h.Pump("pb2", B, "B2", "b-2", 5, 2, "ws-b", nominal_flow_lpm=b2_flow),
        ],
    )
    b3 = dataclasses.replace(activation("b3", "pb1", "completed", 1, *b2_runs), pump_id="pb2")
    history = clean(
        runs=[*RUNS, run(B, "b-2", "b3", *b2_runs)],
        activations=[*ACTIVATIONS, b3],
        operations=[*OPERATIONS, admitted(9, B, "pb2", "b3")],
    )
    return dataclasses.replace(history, config=config)


def test_runs_within_the_flow_budget_are_clean() -> None:
    assert check(with_flows(40)) == []  # 60 + 40 = 100: the whole budget, not more
    assert check(with_flows(None, (3, 4))) == []  # unknown flow, but alone


def test_runs_that_overdraw_a_source_in_truth_are_a_capacity_breach_naming_flow() -> None:
    for b2_flow in (41, None):  # 60 + 41, or 60 + the whole budget (unknown flow)
        (found,) = check(with_flows(b2_flow))
        assert found.invariant == CAPACITY
        assert "max_flow_lpm is 100" in found.detail
        assert "site-b/b-2" in found.detail
        assert "site-b/shared-1" in found.detail
        assert (found.at, found.until) == (t(2), t(2.5))


def test_flows_survive_the_file_format_and_older_histories_have_none() -> None:
    out = io.StringIO()
    h.Writer(out).write_all(with_flows(40))
    assert h.parse(io.StringIO(out.getvalue())) == with_flows(40)
    older = h.Config.from_json(
        {
            "sites": [{"id": A, "name": "farm A"}],
            "water_sources": [{"id": "w", "site_id": A, "max_concurrent_pumps": 1}],
            "pumps": [
                {
                    "id": "p",
                    "site_id": A,
                    "hardware_id": "h",
                    "max_runtime_s": 5,
                    "cooldown_s": 2,
                    "water_source_id": "w",
                }
            ],
        }
    )
    assert older.water_sources[0].max_flow_lpm is None
    assert older.pumps[0].nominal_flow_lpm is None
