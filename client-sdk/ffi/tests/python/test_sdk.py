"""The Doorstep SDK through its generated Python bindings, against a real server.

Run by `client-sdk/ffi/tests/python.rs`, which starts the server, generates the
bindings into BINDINGS_DIR and passes two enrollment codes. Prints one JSON line
with what it recorded; any failure raises (non-zero exit).
"""

import asyncio
import json
import os
import sys
import threading

sys.path.insert(0, os.environ["BINDINGS_DIR"])

from doorstep_ffi import (  # noqa: E402
    DoorstepClient,
    DoorstepError,
    MemberInput,
    MemberUpdateInput,
    MigrantInput,
    StatusObserver,
    VisitInput,
)


class Recorder(StatusObserver):
    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def on_status(self, status):
        with self.lock:
            self.seen.append(status)


def visit(member_id, date, cash_fen, goods_fen=0, **extra):
    fields = dict(
        date=date,
        member_id=member_id,
        kind="holiday_condolence",
        visitors=["志愿者小王"],
        aid_cash_fen=cash_fen,
        aid_goods_fen=goods_fen,
        goods_description=None,
        notes=None,
        follow_up_due=None,
        follow_up_action=None,
    )
    fields.update(extra)
    return VisitInput(**fields)


async def main():
    url = os.environ["DOORSTEP_URL"]
    data = os.environ["DATA_DIR"]
    month = os.environ["MONTH"]

    phone = await DoorstepClient.open(os.path.join(data, "phone"), url, bytes(range(32)), None)
    recorder = Recorder()
    subscription = phone.observe_status(recorder)
    await phone.enroll(os.environ["CODE_PHONE"])
    assert phone.is_enrolled()

    # Offline work: nothing below talks to the server.
    member = await phone.add_member(
        MemberInput(
            name="张秀英",
            kinds=["hardship", "retired"],
            birthday="1950-03-02",
            phone="13700000000",
            address=None,
            household=None,
            post=None,
            notes=None,
            migrant=MigrantInput(workplace="深圳某厂", card_no="L-017", contact_phone=None, family_contact="女儿"),
        )
    )
    await phone.update_member(
        member,
        MemberUpdateInput(name=None, birthday="1950-03-03", kinds=None, phone=None, address=None, household=None, post=None, notes=None),
    )
    visits = [
        await phone.record_visit(visit(member, f"{month}-02", 50_000, 12_000)),
        await phone.record_visit(visit(member, f"{month}-09", 30_000)),
        await phone.record_visit(
            visit(member, f"{month}-16", 0, 8_000, follow_up_due=f"{month}-20", follow_up_action="送药")
        ),
    ]
    assert await phone.pending_changes() > 0

    # Bad input is refused with a typed error and writes nothing.
    pending = await phone.pending_changes()
    for bad in (visit(member, f"{month}-03", -1), visit(member, "2026-02-30", 1), visit("not-an-id", f"{month}-03", 1)):
        try:
            await phone.record_visit(bad)
        except DoorstepError.Invalid:
            pass
        else:
            raise AssertionError("bad visit accepted")
    assert await phone.pending_changes() == pending

    report = await phone.sync_now()
    assert report.documents >= 2, report
    assert await phone.pending_changes() == 0
    assert phone.status().is_UP_TO_DATE(), phone.status()
    due = await phone.follow_ups_due(f"{month}-28")
    assert [v.id for v in due] == [visits[2]], due

    # The server's view, read back by a second device of the branch.
    office = await DoorstepClient.open(os.path.join(data, "office"), url, bytes(range(1, 33)), None)
    await office.enroll(os.environ["CODE_OFFICE"])
    await office.sync_now()
    seen = await office.visits(month, False)
    assert sorted(v.id for v in seen) == sorted(visits), seen
    history = await office.member_history(member)
    assert history.member.name == "张秀英"
    assert history.aid_total_fen == 50_000 + 12_000 + 30_000 + 8_000, history.aid_total_fen
    assert sorted(history.member.kinds) == ["hardship", "retired"]
    assert history.member.birthday == "1950-03-03"
    assert history.member.migrant.workplace == "深圳某厂" and history.member.migrant.family_contact == "女儿"
    assert history.visits[0].goods_description is None
    assert await office.visits(month, True) == [], "the office recorded none itself"

    subscription.cancel()
    with recorder.lock:
        seen = list(recorder.seen)
    assert any(s.is_SYNCING() for s in seen) and any(s.is_UP_TO_DATE() for s in seen), seen

    print(json.dumps({"member": member, "visits": visits}))


asyncio.run(main())
