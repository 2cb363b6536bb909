"""A generated text-to-SQL task, scored by execution: the LoRA paper's WikiSQL (§5), in miniature.

Every example is a small random table, a question about it in English and the gold SQL:

    CREATE TABLE staff (name TEXT, dept TEXT, city TEXT, salary INTEGER, age INTEGER)
    What is the average salary of the employees in the Legal department?
    -> SELECT AVG(salary) FROM staff WHERE dept = 'Legal'

Eight kinds of question (count, count with a filter, select by equality, select by comparison,
max/min/avg/sum, the same with a filter, order by + limit, look up one cell), each with several
phrasings, over four schemas (employees, products, movies, cities). The two splits share the
schemas' columns and nothing else a model could memorise:

    train     tables named "employees", "workers", "personnel", "products", "items", …; values
              (names, departments, cities, brands, …) from the train pools; the first phrasings
              of each kind
    held-out  tables named "staff", "team_members", "inventory", "goods", "films", "towns", …;
              values from disjoint pools; every phrasing, one per kind never seen in training

so a held-out answer is right only if the model reads the table's name off the schema and copies
the values out of the question (as in WikiSQL, where every question has its own table).
``prompt(ex)`` is SmolLM2's chat template (a system line, then the schema and the question as
the user's turn); the target is ``answer(ex)``: the SQL, then ``<|im_end|>``.

The metric is execution accuracy (WikiSQL's): ``score(sql, ex)`` runs the predicted and the gold
SQL with ``sqlite3`` on the example's table, in memory, and compares the result sets (in order when
the gold query has ORDER BY, as multisets otherwise; floats to 6 decimals). SQL that fails to run,
or runs too long, scores 0; nothing raises. A wrong query that happens to return the right rows
scores 1, as in WikiSQL.
"""
from __future__ import annotations

import random
import re
import sqlite3
from dataclasses import dataclass
from typing import NamedTuple

SPLITS = ("train", "heldout")
SYSTEM = "Translate the question into one SQLite query. Reply with the SQL only."


# ----------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class Category:
    """A TEXT column of repeated values; ``where`` says "col = v" in English: "in the {} department"."""
    name: str
    where: str
    pools: dict  # {"train": (...), "heldout": (...)}: disjoint value pools


@dataclass(frozen=True)
class Number:
    """An INTEGER column; ``noun`` names it in English; ``lo``..``hi`` by ``step``; ``summable``:
    a SUM of it means something (a total salary does, a total year does not)."""
    name: str
    noun: str
    lo: int
    hi: int
    step: int = 1
    summable: bool = True


@dataclass(frozen=True)
class Schema:
    tables: dict  # {"train": (...), "heldout": (...)}: disjoint pools of table names
    entity: str  # the rows, plural: "employees"
    key: str  # the TEXT column naming each row (unique in a table): "name", "title"
    key_noun: str  # how a question says it: "names", "titles"
    keys: dict  # {"train": (...), "heldout": (...)}: disjoint pools of row names
    categories: tuple  # (Category, ...)
    numbers: tuple  # (Number, ...)

    def columns(self) -> list:
        """[(name, SQL type), ...] in the table's column order: key, categories, numbers."""
        return ([(self.key, "TEXT")] + [(c.name, "TEXT") for c in self.categories]
                + [(n.name, "INTEGER") for n in self.numbers])

    def create(self, table: str) -> str:
        cols = ", ".join(f"{n} {t}" for n, t in self.columns())
        return f"CREATE TABLE {table} ({cols})"


def _pools(train: str, heldout: str) -> dict:
    return {"train": tuple(train.split(", ")), "heldout": tuple(heldout.split(", "))}


SCHEMAS = (
    Schema(
        tables=_pools("employees, workers, personnel", "staff, team_members"), entity="employees",
        key="name", key_noun="names",
        keys=_pools("Alice Martin, Bob Chen, Carla Diaz, David Kim, Emma Rossi, Frank Weber, Grace Liu, "
                    "Hugo Silva, Irene Novak, Jack Brown, Karen Patel, Liam Walsh, Maria Lopez, Nina Berg, "
                    "Oscar Meyer, Paula Costa, Quentin Roy, Rita Sato, Sam Taylor, Tina Moreau",
                    "Aaron Blake, Bianca Ferro, Caleb Ortiz, Daria Volkov, Elias Stone, Fiona Hart, "
                    "Gideon Park, Helena Cruz, Ivan Petrov, Julia Haas, Kofi Mensah, Lena Fischer, "
                    "Marco Bellini, Nora Quinn, Omar Haddad, Priya Nair, Rafael Gomes, Sofia Lind, "
                    "Tomas Ruiz, Uma Reddy"),
        categories=(
            Category("dept", "in the {} department", _pools("Sales, Marketing, Engineering, Finance",
                                                            "Legal, Research, Support, Logistics")),
            Category("city", "based in {}", _pools("Paris, Berlin, Madrid, Rome, London",
                                                   "Lisbon, Oslo, Vienna, Prague, Dublin")),
        ),
        numbers=(Number("salary", "salary", 30000, 150000, 1000), Number("age", "age", 21, 65, summable=False)),
    ),
    Schema(
        tables=_pools("products, items, catalog", "inventory, goods"), entity="products", key="name", key_noun="names",
        keys=_pools("Desk Lamp, Office Chair, Water Bottle, Notebook, Backpack, Coffee Mug, Headphones, "
                    "Keyboard, Umbrella, Sunglasses, Wall Clock, Blender, Toaster, Yoga Mat, Hair Dryer, "
                    "Table Fan, Pillow, Frying Pan, Tea Kettle, Mouse Pad",
                    "Garden Hose, Tennis Racket, Guitar Strings, Board Game, Puzzle Box, Rain Jacket, "
                    "Camping Stove, Bike Helmet, Soccer Ball, Drum Pad, Sleeping Bag, Ski Gloves, "
                    "Fishing Rod, Dog Leash, Bird Feeder, Paint Brush, Violin Case, Chess Set, "
                    "Kite, Flashlight"),
        categories=(
            Category("category", "in the {} category", _pools("Kitchen, Office, Home, Electronics",
                                                              "Sports, Toys, Music, Outdoor")),
            Category("brand", "made by {}", _pools("Acme, Globex, Initech, Hooli",
                                                   "Vandelay, Soylent, Tyrell, Cyberdyne")),
        ),
        numbers=(Number("price", "price", 2, 500), Number("stock", "stock", 0, 400)),
    ),
    Schema(
        tables=_pools("movies, cinema, movie_list", "films, pictures"), entity="movies", key="title", key_noun="titles",
        keys=_pools("Silent Harbor, Red Horizon, The Last Orchard, Paper Moon, Iron Valley, Blue Canyon, "
                    "Night Train, Golden Fields, The Glass Tower, Winter Road, Broken Compass, Summer Rain, "
                    "Hidden River, Star Garden, The Quiet Hill, Lost Signal, Crimson Sky, Echo Park, "
                    "Wild Coast, Midnight Bell",
                    "Copper Sun, The Salt Road, Velvet Storm, Frozen Lake, Amber Falls, Dark Meadow, "
                    "Silver Lining, The Long Bridge, Stone Garden, Falling Leaves, Desert Wind, "
                    "Northern Lights, Open Sea, The Black Key, Green Island, Paper Crown, Ghost Pier, "
                    "Moon River, Distant Shore, Quiet Fire"),
        categories=(
            Category("genre", "in the {} genre", _pools("Drama, Comedy, Horror, Action",
                                                        "Western, Musical, Thriller, Romance")),
            Category("director", "directed by {}", _pools("Ava Reed, Ben Cole, Cleo Park, Dan Fox",
                                                          "Eva Lang, Finn Ward, Gia Moss, Hal Pike")),
        ),
        numbers=(Number("year", "release year", 1960, 2024, summable=False), Number("runtime", "runtime", 70, 200)),
    ),
    Schema(
        tables=_pools("cities, places, municipalities", "towns, settlements"), entity="cities",
        key="name", key_noun="names",
        keys=_pools("Avalon, Brookfield, Cedar Falls, Dunmore, Eastwick, Fairview, Glenwood, Harbor City, "
                    "Ironton, Jasper, Kingsport, Lakewood, Millbrook, Northgate, Oakridge, Pinehurst, "
                    "Queensbury, Riverside, Springdale, Thornton",
                    "Ashford, Bellmont, Clearwater, Dovercourt, Elmhurst, Foxborough, Greystone, "
                    "Hollowell, Ivydale, Juniper, Kestrel, Larchmont, Marlow, Newhaven, Orchard Park, "
                    "Pembrook, Redcliff, Silverton, Tidewater, Upton"),
        categories=(
            Category("country", "in {}", _pools("France, Germany, Spain, Italy", "Norway, Chile, Kenya, Japan")),
            Category("region", "in the {} region", _pools("North, South, East, West",
                                                          "Coastal, Highland, Central, Valley")),
        ),
        numbers=(Number("population", "population", 5000, 900000, 1000), Number("area", "area", 10, 900)),
    ),
)


# ----------------------------------------------------------------------------- questions

# Each kind: its SQL, then its phrasings. Training uses all but the last phrasing of a kind; the
# held-out split uses all of them, so about a quarter of its questions are phrased in a way
# training never showed. Fields: {entity} {where} {noun} {key_noun} {agg} {cmp} {v} {k} {item} {top}.
KINDS = {
    "count": ("SELECT COUNT(*) FROM {t}", (
        "How many {entity} are there?",
        "Count the {entity}.",
        "What is the number of {entity}?",
        "Give me the total count of {entity}.",
    )),
    "count_where": ("SELECT COUNT(*) FROM {t} WHERE {c} = '{x}'", (
        "How many {entity} are {where}?",
        "Count the {entity} {where}.",
        "What is the number of {entity} {where}?",
        "Tell me how many {entity} are {where}.",
    )),
    "select_where": ("SELECT {key} FROM {t} WHERE {c} = '{x}'", (
        "List the {key_noun} of the {entity} {where}.",
        "Which {entity} are {where}?",
        "Show the {key_noun} of all {entity} {where}.",
        "I need the {key_noun} of every one of the {entity} {where}.",
    )),
    "select_cmp": ("SELECT {key} FROM {t} WHERE {n} {op} {v}", (
        "Which {entity} have a {noun} {cmp} {v}?",
        "List the {key_noun} of {entity} with a {noun} {cmp} {v}.",
        "Show the {entity} whose {noun} is {cmp} {v}.",
        "Find every one of the {entity} that has a {noun} {cmp} {v}.",
    )),
    "agg": ("SELECT {f}({n}) FROM {t}", (
        "What is the {agg} {noun} of all {entity}?",
        "Give the {agg} {noun} across the {entity}.",
        "What is the {agg} {noun}?",
        "Over all {entity}, what is the {agg} {noun}?",
    )),
    "agg_where": ("SELECT {f}({n}) FROM {t} WHERE {c} = '{x}'", (
        "What is the {agg} {noun} of the {entity} {where}?",
        "Give the {agg} {noun} for {entity} {where}.",
        "Among the {entity} {where}, what is the {agg} {noun}?",
        "For {entity} {where}, compute the {agg} {noun}.",
    )),
    "top_k": ("SELECT {key} FROM {t} ORDER BY {n} {dir} LIMIT {k}", (
        "List the {k} {entity} with the {top} {noun}.",
        "Which {k} {entity} have the {top} {noun}?",
        "Name the {k} {entity} with the {top} {noun}, in order.",
        "Rank the {entity} by {noun} and give the {k} with the {top} values.",
    )),
    "lookup": ("SELECT {n} FROM {t} WHERE {key} = '{item}'", (
        "What is the {noun} of {item}?",
        "Give me the {noun} of {item}.",
        "Tell me the {noun} for {item}.",
        "Look up {item} and report the {noun}.",
    )),
}
AGGS = {"MAX": ("highest", "maximum", "largest"), "MIN": ("lowest", "minimum", "smallest"),
        "AVG": ("average", "mean"), "SUM": ("total",)}
CMPS = {">": ("above", "greater than", "over", "more than"), "<": ("below", "less than", "under")}
TOPS = {"DESC": ("highest", "largest"), "ASC": ("lowest", "smallest")}


class Example(NamedTuple):
    split: str  # "train" or "heldout"
    kind: str  # a key of KINDS
    phrasing: int  # which of the kind's phrasings
    table: str  # the table's name
    schema: str  # CREATE TABLE ... (the prompt shows it)
    rows: tuple  # the table's rows, tuples in the schema's column order
    question: str
    sql: str  # the gold query


def _table(schema: Schema, split: str, rng: random.Random, n_rows: int) -> tuple:
    """Random rows: distinct keys, categories from the split's pools, distinct numbers per column."""
    keys = rng.sample(schema.keys[split], n_rows)
    cats = [[rng.choice(c.pools[split][:3]) if rng.random() < 0.8 else rng.choice(c.pools[split])
             for _ in range(n_rows)] for c in schema.categories]
    nums = [rng.sample(range(n.lo, n.hi + 1, n.step), n_rows) for n in schema.numbers]
    return tuple(zip(keys, *cats, *nums))


def make_example(rng: random.Random, split: str) -> Example:
    """One example of ``split``: a schema, a fresh table, a kind, a phrasing, its values."""
    if split not in SPLITS:
        raise ValueError(f"sql: split must be one of {SPLITS}, got {split!r}")
    schema = rng.choice(SCHEMAS)
    rows = _table(schema, split, rng, rng.randint(6, 10))
    kind = rng.choice(sorted(KINDS))
    sql_form, phrasings = KINDS[kind]
    n_phrasings = len(phrasings) if split == "heldout" else len(phrasings) - 1
    phrasing = rng.randrange(n_phrasings)
    cols = [name for name, _ in schema.columns()]
    ci = rng.randrange(len(schema.categories))
    cat = schema.categories[ci]
    num = rng.choice(schema.numbers)
    x = rng.choice([r[1 + ci] for r in rows])  # a category value present in the table
    values = sorted(r[cols.index(num.name)] for r in rows)
    f = rng.choice(sorted(a for a in AGGS if a != "SUM" or num.summable))
    op = rng.choice(sorted(CMPS))
    direction = rng.choice(sorted(TOPS))
    v = values[rng.randrange(1, len(values) - 1)]  # a threshold strictly inside the column's range
    item = rng.choice(rows)[0]
    table = rng.choice(schema.tables[split])
    fields = dict(t=table, c=cat.name, x=x, key=schema.key, n=num.name, op=op, v=v,
                  f=f, dir=direction, k=rng.randint(2, 4), item=item, entity=schema.entity,
                  where=cat.where.format(x), noun=num.noun, key_noun=schema.key_noun,
                  agg=rng.choice(AGGS[f]), cmp=rng.choice(CMPS[op]), top=rng.choice(TOPS[direction]))
    question = phrasings[phrasing].format(**fields)
    return Example(split, kind, phrasing, table, schema.create(table), rows,
                   question[0].upper() + question[1:], sql_form.format(**fields))


def make_examples(n: int, split: str, seed: int = 0) -> list:
    """``n`` examples of ``split``, the same for the same (n, split, seed); a prefix of a longer
    list with the same seed. The two splits draw from differently seeded generators."""
    rng = random.Random(f"minilora-sql/{split}/{seed}")
    return [make_example(rng, split) for _ in range(n)]


def task(n_train: int, n_heldout: int, seed: int = 0) -> tuple:
    """``(train, heldout)`` lists of ``Example``."""
    return make_examples(n_train, "train", seed), make_examples(n_heldout, "heldout", seed)


# ----------------------------------------------------------------------------- prompt format


def prompt(ex: Example, system: str = SYSTEM) -> str:
    """SmolLM2's chat template, up to the assistant's turn (``add_generation_prompt=True``):

        <|im_start|>system
        Translate the question into one SQLite query. Reply with the SQL only.<|im_end|>
        <|im_start|>user
        CREATE TABLE staff (name TEXT, dept TEXT, city TEXT, salary INTEGER, age INTEGER)
        How many employees are in the Legal department?<|im_end|>
        <|im_start|>assistant
    """
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{ex.schema}\n{ex.question}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def answer(ex: Example) -> str:
    """The assistant's turn: the gold SQL, then the end-of-turn token."""
    return f"{ex.sql}<|im_end|>"


def extract_sql(text: str) -> str:
    """The query in a generation, read generously (a chatty model, the base, gets its best
    chance): the assistant's turn up to ``<|im_end|>``, from its first ``SELECT`` (skipping an
    echoed CREATE TABLE, prose or a ```sql fence) to the first ';', blank line or fence end."""
    text = text.split("<|im_end|>")[0]
    first = re.search(r"\bSELECT\b", text, flags=re.I)
    if first:
        text = text[first.start():]
    return re.split(r";|\n\s*\n|```", text, maxsplit=1)[0].strip()


# ----------------------------------------------------------------------------- execution


MAX_VM_STEPS = 200  # progress-handler calls (each 1,000 SQLite instructions): a runaway query stops


def _database(ex: Example) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(ex.schema)
    marks = ", ".join("?" * len(ex.rows[0]))
    db.executemany(f"INSERT INTO {ex.table} VALUES ({marks})", ex.rows)
    calls = [0]

    def budget():
        calls[0] += 1
        return calls[0] > MAX_VM_STEPS  # a true return aborts the query (OperationalError)

    db.set_progress_handler(budget, 1000)
    return db


def _normal(rows: list) -> list:
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows]


def execute(sql: str, ex: Example) -> list:
    """The rows ``sql`` returns on ``ex``'s table (a fresh in-memory database each call); any
    sqlite3 error propagates (``score`` catches it)."""
    db = _database(ex)
    try:
        return _normal(db.execute(sql).fetchall())
    finally:
        db.close()


def score(sql: str, ex: Example) -> float:
    """1.0 if ``sql`` returns the gold query's rows on ``ex``'s table, else 0.0 (and 0.0 for SQL
    that does not run). Rows compare in order when the gold query orders them, as multisets
    otherwise."""
    gold = execute(ex.sql, ex)
    try:
        got = execute(sql, ex)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError):
        return 0.0
    if "ORDER BY" not in ex.sql.upper():
        gold, got = sorted(gold, key=repr), sorted(got, key=repr)
    return float(got == gold)


def execution_accuracy(sqls, examples) -> float:
    """The mean of ``score`` over matching lists of predicted queries and examples."""
    sqls, examples = list(sqls), list(examples)
    if len(sqls) != len(examples) or not examples:
        raise ValueError(f"execution_accuracy: need equally many queries and examples (> 0), "
                         f"got {len(sqls)} and {len(examples)}")
    return sum(score(s, e) for s, e in zip(sqls, examples)) / len(examples)
