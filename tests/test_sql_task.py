"""The generated text-to-SQL task (minilora/data/sql.py): deterministic by seed, the two splits
share no table, value or query, gold SQL scores 1 against itself, wrong and invalid SQL score 0
without raising; and the masked cross-entropy the demo trains with (functional/losses.py)."""
import numpy as np
import pytest

from minilora.data import sql
from minilora.functional.losses import (IGNORE, LOSSES, softmax_cross_entropy_backward,
                                        softmax_cross_entropy_forward)
from minilora.gradcheck import rel_error


@pytest.fixture(scope="module")
def splits():
    return sql.task(400, 200, seed=0)


def test_generation_is_deterministic_by_seed():
    a, b = sql.task(50, 50, seed=3), sql.task(50, 50, seed=3)
    assert a == b
    assert sql.task(50, 50, seed=4)[0] != a[0]
    assert sql.make_examples(20, "train", seed=3) == a[0][:20]  # a prefix of a longer list


def test_every_kind_and_schema_appears(splits):
    train, heldout = splits
    for name, split in (("train", train), ("heldout", heldout)):
        assert {e.kind for e in split} == set(sql.KINDS)
        assert {e.table for e in split} == {t for schema in sql.SCHEMAS for t in schema.tables[name]}


def test_train_and_heldout_share_no_table_value_or_query(splits):
    train, heldout = splits
    assert not {e.table for e in train} & {e.table for e in heldout}
    assert not {e.sql for e in train} & {e.sql for e in heldout}
    assert not {sql.prompt(e) for e in train} & {sql.prompt(e) for e in heldout}
    cells = lambda split: {v for e in split for r in e.rows for v in r if isinstance(v, str)}  # noqa: E731
    assert not cells(train) & cells(heldout)
    # the last phrasing of every kind is held out: training never shows it
    last = {k: len(p) - 1 for k, (_, p) in sql.KINDS.items()}
    assert all(e.phrasing < last[e.kind] for e in train)
    assert {e.kind for e in heldout if e.phrasing == last[e.kind]} == set(sql.KINDS)


def test_gold_sql_executes_and_scores_one_against_itself(splits):
    for ex in splits[0][:200] + splits[1][:200]:
        rows = sql.execute(ex.sql, ex)
        assert rows, ex  # every question has an answer on its table
        assert sql.score(ex.sql, ex) == 1.0


def test_wrong_sql_scores_zero():
    ex = next(e for e in sql.make_examples(200, "heldout") if e.kind == "top_k")
    assert sql.score(ex.sql, ex) == 1.0
    flipped = ex.sql.replace("DESC", "ASC") if "DESC" in ex.sql else ex.sql.replace("ASC", "DESC")
    assert sql.score(flipped, ex) == 0.0  # values are distinct per column: the order differs
    assert sql.score(f"SELECT COUNT(*) FROM {ex.table}", ex) == 0.0
    lookup = next(e for e in sql.make_examples(200, "heldout") if e.kind == "lookup")
    wrong_table = lookup.sql.replace(lookup.table, "employees")  # a training table: not in this database
    assert sql.score(wrong_table, lookup) == 0.0


def test_order_matters_only_when_the_gold_query_orders():
    ex = next(e for e in sql.make_examples(200, "train") if e.kind == "select_where" and len(sql.execute(e.sql, e)) > 1)
    col, table = ex.sql.split()[1], ex.table
    where = ex.sql.split(" WHERE ", 1)[1]
    assert sql.score(f"SELECT {col} FROM {table} WHERE {where} ORDER BY {col} DESC", ex) == 1.0
    assert sql.score(f"SELECT {col} FROM {table} WHERE {where} ORDER BY {col} ASC", ex) == 1.0


@pytest.mark.parametrize("bad", ["", "SELEC name FROM staff", "SELECT nope FROM staff", "DROP TABLE staff",
                                 "SELECT 1; SELECT 2", "The answer is 42.", "SELECT name FROM staff WHERE",
                                 "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
                                 "\x00", "SELECT " + "(" * 5000])
def test_invalid_sql_scores_zero_without_raising(bad):
    ex = sql.make_examples(1, "heldout")[0]
    assert sql.score(bad, ex) == 0.0


def test_execution_accuracy_is_the_mean_score(splits):
    heldout = splits[1][:4]
    sqls = [heldout[0].sql, "nonsense", heldout[2].sql, f"SELECT COUNT(*) FROM {heldout[3].table} WHERE 0"]
    assert sql.execution_accuracy(sqls, heldout) == pytest.approx(sql.score(sqls[3], heldout[3]) / 4 + 0.5)
    with pytest.raises(ValueError, match="equally many"):
        sql.execution_accuracy(sqls[:2], heldout)


def test_prompt_is_smollm2s_chat_template_and_answer_ends_the_turn():
    ex = sql.make_examples(1, "heldout")[0]
    p = sql.prompt(ex)
    assert p.startswith("<|im_start|>system\n") and p.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert f"<|im_start|>user\n{ex.schema}\n{ex.question}<|im_end|>\n" in p
    assert sql.answer(ex) == ex.sql + "<|im_end|>"


@pytest.mark.parametrize("text, want", [
    ("SELECT name FROM staff<|im_end|>", "SELECT name FROM staff"),
    ("CREATE TABLE staff (name TEXT)\nSELECT name FROM staff", "SELECT name FROM staff"),
    ("Here it is:\n```sql\nSELECT name\nFROM staff;\n```", "SELECT name\nFROM staff"),
    ("SELECT name FROM staff\n\nThis lists the names.", "SELECT name FROM staff"),
    ("The answer is 3.", "The answer is 3."),
])
def test_extract_sql_reads_a_generation_generously(text, want):
    assert sql.extract_sql(text) == want


# ----------------------------------------------------------------------------- masked cross-entropy


def test_ignore_index_none_is_the_plain_loss():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((2, 5, 7)), rng.integers(0, 7, (2, 5))
    a, ca = softmax_cross_entropy_forward(z, y)
    b, cb = softmax_cross_entropy_forward(z, y, ignore_index=IGNORE)  # nothing ignored
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    np.testing.assert_allclose(softmax_cross_entropy_backward(1.0, ca)[0], softmax_cross_entropy_backward(1.0, cb)[0],
                               rtol=1e-12)


def test_masked_loss_is_the_loss_of_the_kept_positions_and_its_gradient_is_exact():
    rng = np.random.default_rng(1)
    z, y = rng.standard_normal((3, 6, 9)), rng.integers(0, 9, (3, 6))
    keep = rng.random((3, 6)) < 0.5
    keep[0, 0] = True
    y_masked = np.where(keep, y, IGNORE)
    forward, backward = LOSSES["masked_cross_entropy"]
    L, cache = forward(z, y_masked)
    want, _ = softmax_cross_entropy_forward(z[keep], y[keep])  # the kept rows alone
    assert float(L) == pytest.approx(float(want), rel=1e-12)
    dz = backward(1.0, cache)[0]
    assert dz.shape == z.shape and np.all(dz[~keep] == 0)  # ignored rows get no gradient
    num, h = np.zeros_like(z), 1e-6  # central differences, float64: expect ~1e-9 relative error
    for idx in np.ndindex(*z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        num[idx] = (float(forward(zp, y_masked)[0]) - float(forward(zm, y_masked)[0])) / (2 * h)
    assert rel_error(dz, num) < 1e-7


def test_masked_loss_refuses_all_ignored_and_bad_ids():
    z = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="every target is ignore_index"):
        softmax_cross_entropy_forward(z, np.full((2, 3), IGNORE), ignore_index=IGNORE)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        softmax_cross_entropy_forward(z, np.array([[IGNORE, 4, 0], [0, 0, 0]]), ignore_index=IGNORE)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):  # without ignore_index, −100 is an error
        softmax_cross_entropy_forward(z, np.array([[IGNORE, 1, 0], [0, 0, 0]]))
    with pytest.raises(TypeError, match="integer class ids"):
        softmax_cross_entropy_forward(z, np.zeros((2, 3)), ignore_index=IGNORE)
