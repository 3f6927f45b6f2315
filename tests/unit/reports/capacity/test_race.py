"""The closed-loop batch-catching race, counted in client rows."""

from __future__ import annotations

import pandas as pd

from loadgen.results import Col
from reports.capacity import CapacityModel, batch_catch_counts
from tests.unit.reports import synth


def _race_rows(rows: list[tuple[int, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                Col.USER: user,
                Col.TARGET: "http://127.0.0.1:8000",
                Col.SENT_AT: sent,
                Col.FIRST_TOKEN_AT: first,
                Col.FINISHED_AT: fin,
            }
            for user, sent, first, fin in rows
        ]
    )


def test_batch_catch_counts_from_client_rows() -> None:
    rows = _race_rows(
        [
            # batch 1: user 1's longer prompt finishes last; user 0 already waits again
            (0, 0.0, 0.1, 0.5),
            (1, 0.0, 0.3, 0.8),
            # batch 2: user 1's next request caught it
            (0, 0.5, 0.9, 1.3),
            (1, 0.8, 1.1, 1.6),
            # batch 3: user 1 (last of batch 2) missed it and waits for batch 4
            (0, 1.3, 1.7, 2.1),
            (1, 1.6, 2.2, 2.6),
            # batch 5: user 0 (last of batch 3) missed batch 4
            (0, 2.1, 2.7, 3.0),
        ]
    )
    assert batch_catch_counts(rows) == (1, 3)
    assert batch_catch_counts(rows.iloc[:0]) == (0, 0)


def test_unobserved_catch_race_is_even_odds(one_replica_model: CapacityModel) -> None:
    # The synthetic users of a replica always share one batch: nobody ever waits while a
    # batch ends, so the race is never run and its odds are unknown.
    st = one_replica_model.service(synth.INT8_BASE_ID)
    assert st.catch_next_batch_p == 0.5
    assert any("never observed" in n for n in st.notes)
