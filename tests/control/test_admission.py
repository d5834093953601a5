"""Admission as pure logic: seats, the line, the rate, tokens and tickets, with a fake clock."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amphi.control.admission import Admission, Admitted, Gcra, Waiting, WaitingLine
from amphi.control.health import Governor, HealthSample
from amphi.control.tokens import Signer
from amphi.core.config import AdmissionConfig
from amphi.core.errors import BadTicket, Forbidden, TokenExpired, TooBusy, TooEarly, Unauthorized

SECRET = b"k" * 32
T0 = 1_800_000_000.0


def make(**kw: object) -> Admission:
    cfg = AdmissionConfig(**{"max_listeners": 3, "admit_rate_per_s": 1000.0, "admit_burst": 1000, **kw})  # type: ignore[arg-type]
    return Admission(cfg, Signer(SECRET), random.Random(7))


# --- the line ----------------------------------------------------------------------------------


def test_waiting_line_positions_stay_exact_when_entries_leave_anywhere() -> None:
    line = WaitingLine(capacity=8)  # small: forces compaction and growth
    seqs = [line.push() for _ in range(50)]
    rng = random.Random(1)
    alive = list(seqs)
    for _ in range(30):
        gone = alive.pop(rng.randrange(len(alive)))
        line.remove(gone)
        for i, s in enumerate(alive[:10]):
            assert line.position(s) == i + 1
        alive += [line.push()]
    assert len(line) == len(alive)
    assert line.head() == alive[0]
    assert [line.position(s) for s in alive] == list(range(1, len(alive) + 1))
    with pytest.raises(KeyError):
        line.remove(seqs[0] if seqs[0] not in alive else -5)


def test_gcra_spaces_grants_and_allows_a_burst() -> None:
    g = Gcra(rate=10, burst=3)
    assert [g.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert g.wait(0.0) == pytest.approx(0.1)
    assert not g.take(0.05) and g.take(0.1)
    granted = sum(g.take(1.0 + i / 1000) for i in range(1000))  # a one-second stampede
    assert granted <= 10 + 3


# --- seats and the line ------------------------------------------------------------------------


def test_seats_fill_then_the_line_is_fifo_with_exact_positions() -> None:
    adm = make()
    answers = [adm.join("s", T0) for _ in range(8)]
    assert [type(a) for a in answers] == [Admitted] * 3 + [Waiting] * 5
    assert [a.position for a in answers[3:]] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    assert all(a.order == "fifo" for a in answers[3:])  # type: ignore[union-attr]
    c = adm.counts("s")
    assert (c.listeners, c.waiting, c.admitted_total) == (3, 5, 3)

    # the first listener leaves: the head of the line is offered the seat, nobody else
    assert adm.leave("s", token=answers[0].token, now=T0 + 1)  # type: ignore[union-attr]
    assert adm.promote(T0 + 1) is None
    w1, w2 = answers[3], answers[4]
    assert isinstance(adm.poll("s", w1.ticket, T0 + 20), Admitted)  # type: ignore[union-attr]
    again = adm.poll("s", w2.ticket, T0 + 20)  # type: ignore[union-attr]
    assert isinstance(again, Waiting) and again.position == 1 and again.waiting == 4
    assert adm.occupied == 3


def test_nobody_jumps_the_line_even_when_a_seat_is_free() -> None:
    adm = make()
    first = [adm.join("s", T0) for _ in range(4)]
    assert adm.leave("s", token=first[0].token, now=T0)  # type: ignore[union-attr]
    late = adm.join("s", T0)  # a seat is free, but someone was waiting before
    assert isinstance(late, Waiting) and late.position == 2


def test_under_degradation_new_joins_queue_but_the_line_keeps_moving_under_the_limit() -> None:
    adm = make(max_listeners=10)
    adm.paused = True  # rung 2 of the ladder
    answers = [adm.join("s", T0) for _ in range(4)]
    assert all(isinstance(a, Waiting) for a in answers)  # nobody seated straight away ...
    adm.promote(T0)
    assert adm.counts("s").reserved == 4 and adm.waiting == 0  # ... but the line is not frozen
    adm.limit = 4  # the AIMD limit is the brake
    late = adm.join("s", T0)
    adm.promote(T0)
    assert isinstance(late, Waiting) and adm.waiting == 1


def test_the_rate_turns_a_stampede_into_a_ramp() -> None:
    adm = make(max_listeners=1000, admit_rate_per_s=10.0, admit_burst=5)
    answers = [adm.join("s", T0) for _ in range(100)]
    assert sum(isinstance(a, Admitted) for a in answers) == 5
    assert adm.promote(T0) == pytest.approx(0.1, abs=1e-3)
    for i in range(1, 11):  # one second later: 10 more offered, at the rate
        adm.promote(T0 + i / 10)
    assert adm.counts("s").reserved == 10 and adm.waiting == 85


def test_ticket_from_two_clients_keeps_one_place_and_one_seat() -> None:
    adm = make(max_listeners=1)
    seated = adm.join("s", T0)
    w = adm.join("s", T0)
    other = adm.join("s", T0)
    assert isinstance(w, Waiting) and isinstance(other, Waiting)
    a = adm.poll("s", w.ticket, T0 + 10)
    b = adm.poll("s", w.ticket, T0 + 20)
    assert isinstance(a, Waiting) and isinstance(b, Waiting) and a.position == b.position == 1
    assert adm.waiting == 2
    adm.leave("s", token=seated.token, now=T0 + 21)  # type: ignore[union-attr]
    adm.promote(T0 + 21)
    x, y = adm.poll("s", w.ticket, T0 + 22), adm.poll("s", w.ticket, T0 + 22)
    assert isinstance(x, Admitted) and isinstance(y, Admitted) and x.seat == y.seat
    assert adm.occupied == 1 and adm.counts("s").listeners == 1


def test_polling_too_early_is_refused_cheaply() -> None:
    adm = make(max_listeners=0 + 1)
    adm.join("s", T0)
    w = adm.join("s", T0)
    assert isinstance(w, Waiting)
    with pytest.raises(TooEarly) as info:
        adm.poll("s", w.ticket, T0 + 0.1)
    assert 0 < info.value.retry_after_s <= w.retry_after_s
    assert isinstance(adm.poll("s", w.ticket, T0 + w.retry_after_s), Waiting)


def test_places_are_held_without_polls_and_seats_lapse_without_renewals() -> None:
    cfg = AdmissionConfig()
    adm = make(max_listeners=1)
    seated = adm.join("s", T0)
    w = adm.join("s", T0)
    assert isinstance(seated, Admitted) and isinstance(w, Waiting)
    # the waiting client follows the line document, not the API: its place is held
    adm.sweep(T0 + cfg.ticket_hold_s + 1)
    assert adm.waiting == 1
    again = adm.poll("s", w.ticket, T0 + cfg.ticket_hold_s + 2)
    assert isinstance(again, Waiting) and not again.requeued and again.position == 1
    # the listener renews within its token's life and keeps the seat; then stops renewing
    t1 = T0 + cfg.token_ttl_s - 5
    renewed = adm.renew("s", seated.token, t1)
    assert renewed.seat == seated.seat and renewed.expires > seated.expires and renewed.renewed
    adm.sweep(t1 + cfg.token_ttl_s)  # past the token, still within its grace
    assert adm.counts("s").listeners == 1
    adm.sweep(t1 + cfg.token_ttl_s + cfg.seat_grace_s + 1)
    assert adm.counts("s").listeners == 0
    with pytest.raises(TokenExpired):
        adm.renew("s", renewed.token, t1 + cfg.token_ttl_s + cfg.seat_grace_s + 1)


def test_renewal_after_leaving_is_refused() -> None:
    adm = make()
    a = adm.join("s", T0)
    assert isinstance(a, Admitted)
    assert adm.leave("s", token=a.token, now=T0)
    assert not adm.leave("s", token=a.token, now=T0)  # nothing left to free
    with pytest.raises(TokenExpired):
        adm.renew("s", a.token, T0 + 1)


def test_early_arrivals_are_drawn_in_random_order_at_the_start() -> None:
    adm = make(max_listeners=2)
    adm.rng = random.Random(3)
    early = [adm.join("s", T0 + i, before_start=True) for i in range(12)]
    waiting = [a for a in early if isinstance(a, Waiting)]
    assert len(waiting) == 10 and all(w.order == "draw_at_start" for w in waiting)
    assert all(w.position == i + 1 for i, w in enumerate(waiting))  # the pool's size: an upper bound
    assert adm.draw("s") == 10
    positions = [adm.poll("s", w.ticket, T0 + 100).position for w in waiting]  # type: ignore[union-attr]
    assert sorted(positions) == list(range(1, 11))
    assert positions != list(range(1, 11))  # shuffled (this seed), not by who hammered first
    late = adm.join("s", T0 + 100)
    assert isinstance(late, Waiting) and late.position == 11 and late.order == "fifo"


def test_hosts_are_never_queued_nor_counted() -> None:
    adm = make(max_listeners=1)
    adm.join("s", T0)
    adm.join("s", T0)
    host = adm.host("s", T0)
    assert isinstance(host, Admitted) and adm.occupied == 1
    assert adm.signer.verify_token("s", host.token, T0).host
    assert adm.renew("s", host.token, T0 + 1).token != host.token


def test_the_waiting_room_has_a_bound() -> None:
    adm = make(max_listeners=1, max_waiting=2)
    adm.join("s", T0)
    adm.join("s", T0)
    adm.join("s", T0)
    with pytest.raises(TooBusy) as info:
        adm.join("s", T0)
    assert info.value.retry_after_s is not None


def test_retry_after_is_jittered_and_estimates_come_from_how_fast_the_line_moves() -> None:
    adm = make(max_listeners=10, admit_rate_per_s=5.0, admit_burst=1)
    assert isinstance(adm.join("s", T0), Admitted)
    early = [adm.join("s", T0) for _ in range(9)]
    for i in range(1, 11):
        adm.promote(T0 + i * 0.2)  # the 9 are offered seats over 2 s, at the rate
    assert adm.counts("s").reserved == 9
    waits = [adm.join("s", T0 + 2) for _ in range(60)]
    assert len({w.retry_after_s for w in waits}) > 40  # type: ignore[union-attr]
    rate = adm.line_rate(T0 + 2)
    assert rate == pytest.approx(9 / adm.cfg.rate_window_s)
    w = waits[-1]
    assert isinstance(w, Waiting) and w.estimated_wait_s == pytest.approx(60 / rate, rel=0.01)
    assert waits[0].retry_after_s < 2 < waits[-1].retry_after_s  # type: ignore[union-attr]  # the front polls sooner
    assert all(isinstance(e, Waiting) for e in early)


def test_no_estimate_when_the_room_is_full_and_nobody_leaves() -> None:
    adm = make(max_listeners=2)
    adm.join("s", T0)
    adm.join("s", T0)
    w = adm.join("s", T0)
    assert isinstance(w, Waiting) and w.estimated_wait_s is None


def test_ending_a_space_frees_its_seats_and_line() -> None:
    adm = make(max_listeners=2)
    for _ in range(2):
        adm.join("a", T0)
    adm.join("b", T0)
    adm.close_space("a")
    assert adm.occupied == 0 and adm.counts("a").listeners == 0
    assert adm.waiting == 1  # b's line is untouched; its head is offered a freed seat
    adm.promote(T0)
    assert adm.counts("b").reserved == 1


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_interleaving_keeps_the_cap_exact_and_counts_each_seat_once(data: st.DataObject) -> None:
    """Joins, polls, leaves, renewals, edges' extensions, promotions and sweeps in any order,
    over two Spaces: never more seats than the limit, each seat counted once (as a listener
    once issued, as an offer while reserved), and no seat outlives one token life from now."""
    adm = make(max_listeners=3)
    tokens: list[tuple[str, str]] = []  # (space, token): every token handed out, the edges' too
    tickets: list[tuple[str, str]] = []

    def keep(space: str, answer: Admitted | Waiting) -> None:
        if isinstance(answer, Admitted):
            tokens.append((space, answer.token))
        else:
            tickets.append((space, answer.ticket))

    now = T0
    for _ in range(data.draw(st.integers(1, 60))):
        now += data.draw(st.sampled_from([0.0, 0.5, 5.0, 20.0, 45.0]))
        op = data.draw(st.sampled_from(["join", "poll", "leave", "renew", "extend", "promote", "sweep"]))
        try:
            if op == "join":
                space = data.draw(st.sampled_from("xy"))
                keep(space, adm.join(space, now))
            elif op == "poll" and tickets:
                space, ticket = data.draw(st.sampled_from(tickets))
                keep(space, adm.poll(space, ticket, now))
            elif op == "leave" and tokens:
                space, token = data.draw(st.sampled_from(tokens))
                adm.leave(space, token=token, now=now)
            elif op == "renew" and tokens:
                space, token = data.draw(st.sampled_from(tokens))
                keep(space, adm.renew(space, token, now))
            elif op == "extend":
                space = data.draw(st.sampled_from("xy"))
                known = [adm.signer.verify_token(sp, tok, now, grace_s=1e9).seat for sp, tok in tokens]
                picked = data.draw(st.lists(st.sampled_from([*known, *adm._seats, "never-seen"]), max_size=5))
                renewals = [(sid, int(now), int(now) + data.draw(st.integers(-30, 200))) for sid in picked]
                held = [adm.seat_held(space, sid) for sid in picked]  # adm._seats holds the offers too
                assert adm.extend(space, renewals, now) == [sid for sid, h in zip(picked, held) if not h]
                tokens.extend((space, adm.signer.token(space, sid, new))
                              for (sid, _, new), h in zip(renewals, held) if h)
            elif op == "promote":
                adm.promote(now)
            elif op == "sweep":
                adm.sweep(now)
        except (TokenExpired, TooEarly):
            pass
        seats = list(adm._seats.values())
        assert adm.occupied == len(seats) <= adm.limit
        for space in "xy":
            c = adm.counts(space)
            assert c.listeners == sum(s.issued and s.space_id == space for s in seats)
            assert c.reserved == sum(s.reserved and s.space_id == space for s in seats)
        assert all(s.issued != s.reserved for s in seats)
        assert all(s.token_expires <= math.ceil(now + adm.cfg.token_ttl_s) + 1 for s in seats)


# --- tokens and tickets --------------------------------------------------------------------------


def test_tokens_are_bound_signed_and_expire() -> None:
    s = Signer(SECRET)
    tok = s.token("space1", "seatseat1", int(T0) + 60)
    assert s.verify_token("space1", tok, T0).seat == "seatseat1"
    with pytest.raises(Forbidden):
        s.verify_token("space2", tok, T0)  # another Space's
    with pytest.raises(Forbidden):
        Signer(b"z" * 32).verify_token("space1", tok, T0)  # another key: forged
    with pytest.raises(Forbidden):
        s.verify_token("space1", tok.replace(str(int(T0) + 60), str(int(T0) + 6000)), T0)  # extended
    with pytest.raises(TokenExpired):
        s.verify_token("space1", tok, T0 + 61)  # replayed after expiry
    with pytest.raises(Unauthorized):
        s.verify_token("space1", None, T0)
    with pytest.raises(BadTicket):
        s.verify_ticket("space1", s.ticket("space2", 5, int(T0)))
    for garbage in ("", "1.2", "x" * 300, 42, None):
        with pytest.raises(BadTicket):
            s.verify_ticket("space1", garbage)


# --- health --------------------------------------------------------------------------------------


def test_governor_cuts_the_limit_under_pressure_and_climbs_the_ladder() -> None:
    cfg = AdmissionConfig(max_listeners=1000, escalate_after=2, recover_after=3)
    gov = Governor(cfg)
    sick = HealthSample(loop_lag_s=0.5, loop_cpu=0.99, join_p95_s=1.0)
    well = HealthSample(loop_lag_s=0.001, loop_cpu=0.2, join_p95_s=0.01)
    gov.update(sick, occupied=900, now=1)
    assert gov.limit == 900 and gov.level == 0 and len(gov.problems) == 3
    gov.update(sick, occupied=900, now=2)
    assert gov.level == 1 and gov.level_name == "optional_work_off" and gov.retry_factor == 2
    assert gov.optional_work_off and not gov.queue_new_joins  # what can wait is shed first
    for t in (3, 4):
        gov.update(sick, occupied=900, now=t)
    assert gov.level == 2 and gov.level_name == "queue_new_joins" and gov.queue_new_joins
    low = gov.limit
    for t in range(5, 8):
        gov.update(well, occupied=900, now=t)  # the room is over the limit: it grows back
    assert gov.level == 1 and gov.limit > low
    for t in range(8, 200):
        gov.update(well, occupied=0, now=t)  # nearly empty: no reason to grow
    assert gov.level == 0 and gov.limit < 1000


def test_behind_edges_an_unhealthy_node_sheds_and_never_cuts_seats() -> None:
    """Seats cost a node behind edges nothing but a share of a report: under pressure it sheds
    (stretches waiting clients, pauses replays) and keeps seating at the admission rate."""
    cfg = AdmissionConfig(max_listeners=1000, escalate_after=2, recover_after=3)
    gov = Governor(cfg, seats_cost=False)
    sick = HealthSample(loop_lag_s=0.5, loop_cpu=0.99, join_p95_s=1.0)
    for t in range(1, 50):
        gov.update(sick, occupied=900, now=t)
    assert gov.limit == 1000 and gov.level == 2 and gov.retry_factor == 3
