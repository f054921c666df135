"""Text input: the featurizer, the n-gram statistics, lr_ngram, the TF-IDF projection, Gumbel
top-k, and a text run end to end, each against an independent reference: the ``regex`` module and
``hashlib`` (DSIR's tokenizer and bucket function), the ``xxhash`` package, scikit-learn's
TfidfTransformer, and hand-computed values."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import regex
import xxhash
from pyspark.sql import functions as F

from conftest import make_config, read_delta, read_sets
from distunlearn.commands.demo import spam_sample
from distunlearn.commands.run import run_pipeline, run_score
from distunlearn.core.text import GRAMS, NgramModel, NgramStats, TextProjection, TextSettings
from distunlearn.errors import ConfigError, InputError
from distunlearn.transforms.statistics import ngram_stats
from distunlearn.transforms.text import bucket, ngrams, normalize_text, tokens

# NLTK's WordPunctTokenizer (DSIR's) as NLTK >= 3.10.3 compiles it: with the regex module
WORD_PUNCT = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)


def ref_grams(text: str, order: int = 2) -> list[str]:
    toks = WORD_PUNCT.findall(text.lower())
    return toks + [" ".join(toks[i:i + m]) for m in range(2, order + 1) for i in range(len(toks) - m + 1)]


def ref_bucket(gram: str, buckets: int, hash_name: str) -> int:
    data = gram.encode("utf-8")
    if hash_name == "sha256":  # DSIR's hash_buckets
        return int(hashlib.sha256(data).hexdigest(), 16) % buckets
    h = xxhash.xxh64_intdigest(data, seed=42)  # Spark's xxhash64: XXH64 with seed 42, as a signed long
    return (h - (1 << 64) if h >= 1 << 63 else h) % buckets


def ref_counts(texts: list[str], buckets: int, hash_name: str, order: int = 2) -> np.ndarray:
    out = np.zeros((len(texts), buckets), np.int64)
    for i, t in enumerate(texts):
        for g in ref_grams(t, order):
            out[i, ref_bucket(g, buckets, hash_name)] += 1
    return out


def test_tokens_and_ngrams_of_a_hand_example(spark):
    df = spark.createDataFrame([("Buy cheap pills, buy NOW!!",), ("",), ("hi",), ("a b",)], "t string")
    got = [(r[0], r[1], r[2]) for r in df.select(tokens(F.col("t")), ngrams(tokens(F.col("t")), 2),
                                                  ngrams(tokens(F.col("t")), 3)).collect()]
    assert got[0][0] == ["buy", "cheap", "pills", ",", "buy", "now", "!!"]
    assert got[0][1] == ["buy", "cheap", "pills", ",", "buy", "now", "!!",
                         "buy cheap", "cheap pills", "pills ,", ", buy", "buy now", "now !!"]
    assert got[0][2] == got[0][1] + ["buy cheap pills", "cheap pills ,", "pills , buy", ", buy now", "buy now !!"]
    assert got[1] == ([], [], [])
    assert got[2] == (["hi"], ["hi"], ["hi"])
    assert got[3] == (["a", "b"], ["a", "b", "a b"], ["a", "b", "a b"])


def test_unicode_tokens_match_nltks_regex_module(spark):
    texts = ["Café crème — naïve résumé!", "Straße 12,5 % für ÄRZTE…", "emoji 🙂 ok?! tab\tnew\nline",
             "e\u0301t\u00e9 \u0342\u0342x \u00b2\u00bd_a\u2163"]  # combining marks, numbers, underscore
    got = spark.createDataFrame([(t,) for t in texts], "t string").select(tokens(F.col("t"))).collect()
    assert [r[0] for r in got] == [WORD_PUNCT.findall(t.lower()) for t in texts]


@pytest.mark.parametrize("hash_name", ["xxhash64", "sha256"])
@pytest.mark.parametrize("buckets", [7, 10000, 65536])
def test_bucket_matches_the_reference_hash(spark, hash_name, buckets):
    grams = ["buy", "cheap pills", "", "naïve", "!!", "x" * 300, "🙂 ok", "0", "the the"]
    df = spark.createDataFrame([(g,) for g in grams], "g string")
    got = [r[0] for r in df.select(bucket(F.col("g"), buckets, hash_name)).collect()]
    assert got == [ref_bucket(g, buckets, hash_name) for g in grams]


def test_ngram_statistics_match_numpy(spark):
    texts = ["spam spam eggs", "Eggs, and SPAM!", "", "spam spam spam spam", "a b c d e f g"] * 3
    pdf = pd.DataFrame({"id": range(len(texts)), "body": texts})
    df = normalize_text(spark.createDataFrame(pdf).repartition(3), "id", "body", "forget",
                        TextSettings(buckets=50, hash_name="sha256"))
    stats = ngram_stats(df, "forget", "body", 50)
    counts = ref_counts(texts, 50, "sha256")
    assert stats.n_docs == len(texts)
    np.testing.assert_array_equal(stats.counts, counts.sum(axis=0))
    np.testing.assert_array_equal(stats.doc_freq, (counts > 0).sum(axis=0))


def test_null_and_non_string_text_columns_are_errors(spark):
    pdf = pd.DataFrame({"id": [1, 2, 3], "body": ["a", None, "b"], "n": [1, 2, 3]})
    df = spark.createDataFrame(pdf, "id long, body string, n long")
    with pytest.raises(InputError, match=r"text column 'body' of the forget table has 1 null values"):
        ngram_stats(normalize_text(df, "id", "body", "forget", TextSettings()), "forget", "body", 65536)
    with pytest.raises(InputError, match=r"text column 'n' of the retain table must be string, got bigint"):
        normalize_text(df, "id", "n", "retain", TextSettings())
    with pytest.raises(InputError, match=r"retain table has no column 'txt'"):
        normalize_text(df, "id", "txt", "retain", TextSettings())


def test_lr_ngram_on_a_hand_computed_example():
    # B = 4 buckets. forget: doc a = [0, 0, 1], doc b = [2]; retain: [1, 3] and [3, 3].
    # C1 = (2, 1, 1, 0), C2 = (0, 1, 0, 3), 4 n-grams each; add-one smoothing over 4 buckets:
    # theta1 = (3, 2, 2, 1) / 8, theta2 = (1, 2, 1, 4) / 8, so w = (ln 3, 0, ln 2, -ln 4).
    forget = NgramStats.from_grams(np.array([0, 0, 1, 2]), np.array([3, 1]), 4)
    retain = NgramStats.from_grams(np.array([1, 3, 3, 3]), np.array([2, 2]), 4)
    np.testing.assert_array_equal(forget.counts, [2, 1, 1, 0])
    np.testing.assert_array_equal(forget.doc_freq, [1, 1, 1, 0])
    np.testing.assert_array_equal(retain.doc_freq, [0, 1, 0, 2])
    model = NgramModel.build(forget, retain, smoothing=1.0, length_norm=False)
    np.testing.assert_allclose(model.weights, [math.log(3), 0.0, math.log(2), -math.log(4)], atol=1e-15)
    docs = (np.array([0, 0, 1, 2, 3, 3]), np.array([3, 1, 0, 2]))  # a, b, an empty doc, [3, 3]
    np.testing.assert_allclose(model.score(*docs), [math.log(9), math.log(2), 0.0, -2 * math.log(4)], atol=1e-14)
    normed = dataclasses.replace(model, length_norm=True)
    np.testing.assert_allclose(normed.score(*docs), [math.log(9) / 3, math.log(2), 0.0, -math.log(4)], atol=1e-14)


def test_tfidf_projection_matches_sklearn_and_the_documented_matrix():
    from sklearn.feature_extraction.text import TfidfTransformer

    rng = np.random.default_rng(3)
    b, d, seed = 40, 6, 11
    lengths = rng.integers(0, 9, size=25)
    values = rng.integers(0, b, size=int(lengths.sum()))
    counts = np.zeros((len(lengths), b))
    np.add.at(counts, (np.repeat(np.arange(len(lengths)), lengths), values), 1)
    half = NgramStats.from_grams(values, lengths, b)
    projection = TextProjection.build(half, NgramStats.empty(b), d, seed)
    tfidf = TfidfTransformer().fit_transform(counts).toarray()  # smooth idf, l2 rows: the documented TF-IDF
    np.testing.assert_allclose(projection.tfidf(values, lengths).toarray(), tfidf, rtol=1e-12, atol=1e-15)
    matrix = np.random.default_rng([seed, b, d]).standard_normal((b, d), dtype=np.float32) / np.float32(math.sqrt(d))
    np.testing.assert_allclose(projection.project(values, lengths), tfidf @ matrix, rtol=1e-5, atol=1e-6)
    assert not projection.project(values, lengths)[lengths == 0].any()  # empty documents: zero vectors


def test_text_settings_are_checked():
    with pytest.raises(ConfigError, match="ngram_smoothing must be a positive number"):
        TextSettings(smoothing=0.0).check()
    with pytest.raises(ConfigError, match=r"ngram_buckets must be in \[2, 16777216\]"):
        TextSettings(buckets=1).check()
    with pytest.raises(ConfigError, match="ngram_order must be in"):
        TextSettings(order=0).check()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    sample = spam_sample()
    paths = {}
    for domain, label in (("forget", "spam"), ("retain", "ham")):
        pdf = sample[sample.label == label][["id", "text"]]
        path = str(root / domain)
        spark.createDataFrame(pdf, "id long, text string").repartition(3).write.format("delta").save(path)
        paths[domain] = path
    return root, paths, sample


def _reference_scores(sample: pd.DataFrame, buckets: int, smoothing: float) -> tuple[np.ndarray, np.ndarray, dict]:
    spam, ham = sample[sample.label == "spam"], sample[sample.label == "ham"]
    cf, cr = ref_counts(list(spam.text), buckets, "sha256"), ref_counts(list(ham.text), buckets, "sha256")
    tf, tr = cf.sum(0) + smoothing, cr.sum(0) + smoothing
    w = np.log(tf / tf.sum()) - np.log(tr / tr.sum())
    return spam.id.to_numpy(), cf @ w, {"forget": cf, "retain": cr}


def _top(ids: np.ndarray, scores: np.ndarray, k: int) -> list[int]:
    return [int(ids[i]) for i in np.lexsort((ids, -scores))[:k]]


@pytest.mark.second_line
def test_text_run_matches_the_reference(spark, corpus):
    root, paths, sample = corpus
    cfg = make_config(root, paths["forget"], paths["retain"], text_col="text", ngram_hash="sha256",
                      ngram_buckets=1024, text_dim=8, methods=("lr_ngram", "lr_gauss", "random"),
                      budgets=(0.25, 0.5), budget_counts=(), run_id="text1")
    report = run_pipeline(spark, cfg)
    ids, scores, counts = _reference_scores(sample, 1024, 1.0)
    sets = read_sets(Path(cfg.output))
    ours = sets[sets.method == "lr_ngram"]
    for k in (10, 20):
        got = ours[ours.k == k].sort_values("rank")
        assert list(got.id) == _top(ids, scores, k)
        order = np.lexsort((ids, -scores))[:k]
        np.testing.assert_allclose(got.score.to_numpy(), scores[order], rtol=1e-9)
    assert set(sets.method) == {"lr_ngram", "lr_gauss", "random"}
    assert report.dim == 8 and report.n_forget == 40 and report.n_retain == 40

    stored = read_delta(Path(cfg.output) / "ngram_statistics").set_index("domain")
    for domain in ("forget", "retain"):
        np.testing.assert_array_equal(np.asarray(stored.loc[domain, "counts"]), counts[domain].sum(0))
        np.testing.assert_array_equal(np.asarray(stored.loc[domain, "doc_freq"]), (counts[domain] > 0).sum(0))
        assert stored.loc[domain, "n_docs"] == 40 and stored.loc[domain, "buckets"] == 1024

    # The Gaussian statistics are those of the documented projection of the reference counts.
    from sklearn.feature_extraction.text import TfidfTransformer

    both = np.vstack([counts["forget"], counts["retain"]])
    tfidf = TfidfTransformer().fit_transform(both).toarray()
    matrix = np.random.default_rng([cfg.seed, 1024, 8]).standard_normal((1024, 8), dtype=np.float32) / np.float32(
        math.sqrt(8))
    x = tfidf @ matrix
    gauss = read_delta(Path(cfg.output) / "statistics").set_index("domain")
    np.testing.assert_allclose(np.asarray(gauss.loc["forget", "mean"]), x[:40].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gauss.loc["retain", "mean"]), x[40:].mean(0), rtol=1e-4, atol=1e-6)

    # score with the stored statistics (n-gram and Gaussian) of text1: the same removal sets.
    run_score(spark, dataclasses.replace(cfg, run_id="text2", stats_run_id="text1"))
    sets = read_sets(Path(cfg.output))
    for m in ("lr_ngram", "lr_gauss"):
        a = sets[(sets.run_id == "text1") & (sets.method == m)].sort_values(["k", "rank"])
        b = sets[(sets.run_id == "text2") & (sets.method == m)].sort_values(["k", "rank"])
        assert list(a.id) == list(b.id) and np.array_equal(a.score.to_numpy(), b.score.to_numpy())

    # The report re-scores the tables with the run's stored model: every forget document here.
    from distunlearn.commands.report import collect

    data = collect(spark, dataclasses.replace(cfg, run_id="text1"), sample_rows=100)
    np.testing.assert_allclose(np.sort(data.scores["forget"]["lr_ngram"]), np.sort(scores), rtol=1e-9)


def _spark_gumbel(seed: int, ids: np.ndarray) -> np.ndarray:
    """Spark's xxhash64(seed, "gumbel", id): XXH64 chained over the int's, the string's and the
    long's little-endian bytes, each hash the seed of the next; then -log(-log u)."""
    out = []
    for i in ids:
        h = xxhash.xxh64_intdigest(struct.pack("<i", seed), seed=42)
        h = xxhash.xxh64_intdigest(b"gumbel", seed=h)
        h = xxhash.xxh64_intdigest(struct.pack("<q", int(i)), seed=h)
        u = ((h & ((1 << 53) - 1)) + 0.5) / float(1 << 53)
        out.append(-math.log(-math.log(u)))
    return np.array(out)


def test_gumbel_selection_is_the_seeded_perturbed_top_k(spark, corpus):
    root, paths, sample = corpus
    cfg = make_config(root, paths["forget"], paths["retain"], text_col="text", ngram_hash="sha256",
                      ngram_buckets=1024, text_dim=8, methods=("lr_ngram",), budgets=(0.25,), budget_counts=(),
                      selection="gumbel", seed=5, run_id="gumbel", output=str(root / "gumbel-out"),
                      ngram_length_norm=True)  # scores per n-gram, O(1): the noise matters
    run_pipeline(spark, cfg)
    ids, scores, counts = _reference_scores(sample, 1024, 1.0)
    scores = scores / np.maximum(counts["forget"].sum(1), 1)
    keys = scores + _spark_gumbel(5, ids)
    got = read_sets(Path(cfg.output)).sort_values("rank")
    assert list(got.id) == _top(ids, keys, 10)
    assert list(got.id) != _top(ids, scores, 10)  # the noise changes the set at this size
    np.testing.assert_allclose(got.score.to_numpy(), np.sort(keys)[::-1][:10], rtol=1e-9)


def test_lr_ngram_needs_a_text_column(tmp_path):
    with pytest.raises(ConfigError, match="method lr_ngram scores text: give the text column with --text-col"):
        make_config(tmp_path, "f", "r", methods=("lr_ngram",))


def test_null_text_fails_before_anything_is_written(spark, tmp_path):
    pdf = pd.DataFrame({"id": [1, 2, 3], "text": ["a b", None, "c"]})
    forget = str(tmp_path / "forget")
    spark.createDataFrame(pdf, "id long, text string").write.format("delta").save(forget)
    cfg = make_config(tmp_path, forget, forget, text_col="text", methods=("lr_ngram",), budgets=(0.5,))
    with pytest.raises(InputError, match="text column 'text' of the forget table has 1 null values"):
        run_pipeline(spark, cfg)
    assert not Path(cfg.output).exists()


def test_grams_column_is_what_the_featurizer_writes(spark):
    # normalize_text keeps only id and grams; grams are int bucket ids of every n-gram
    df = spark.createDataFrame([(1, "Buy now")], "id long, text string")
    row = normalize_text(df, "id", "text", "forget", TextSettings(buckets=10000, hash_name="sha256")).first()
    assert row.asDict().keys() == {"id", GRAMS}
    assert row[GRAMS] == [ref_bucket(g, 10000, "sha256") for g in ["buy", "now", "buy now"]]


# ----------------------------------------------------------------------------- sentence embeddings
def test_sentence_embeddings_are_optional_and_never_downloaded(tmp_path):
    if importlib.util.find_spec("sentence_transformers") is None:  # the default install
        with pytest.raises(ConfigError, match="text_embedding_model needs the sentence-transformers package"):
            make_config(tmp_path, "f", "r", text_col="text", text_embedding_model=str(tmp_path))
    else:
        with pytest.raises(ConfigError, match="is not a folder: give a sentence-transformers model saved locally"):
            make_config(tmp_path, "f", "r", text_col="text", text_embedding_model=str(tmp_path / "missing"))


def test_sentence_embedding_features_are_the_models(spark, corpus):
    """Runs only where sentence-transformers and a local model are present (the default install
    has neither): DISTUNLEARN_TEST_EMBEDDING_MODEL=<model folder>."""
    pytest.importorskip("sentence_transformers")
    path = os.environ.get("DISTUNLEARN_TEST_EMBEDDING_MODEL", "")
    if not path:
        pytest.skip("DISTUNLEARN_TEST_EMBEDDING_MODEL (a locally saved sentence-transformers model) is not set")
    from sentence_transformers import SentenceTransformer

    root, paths, sample = corpus
    cfg = make_config(root, paths["forget"], paths["retain"], text_col="text", text_embedding_model=path,
                      methods=("lr_gauss", "lr_ngram"), budgets=(0.5,), budget_counts=(), run_id="embed",
                      output=str(root / "embed-out"))
    run_pipeline(spark, cfg)
    x = SentenceTransformer(path, device="cpu").encode(list(sample[sample.label == "spam"].text))
    gauss = read_delta(Path(cfg.output) / "statistics").set_index("domain")
    np.testing.assert_allclose(np.asarray(gauss.loc["forget", "mean"]), x.mean(0), rtol=1e-3, atol=1e-5)


def test_a_feature_run_never_merges_a_text_runs_statistics(spark, tmp_path):
    """Same Delta sources, same output: a feature run after a text run (whose projected features
    have the same dimension) recomputes its statistics instead of taking the text run's."""
    rng = np.random.default_rng(4)
    paths = {}
    for domain, shift in (("forget", 0.0), ("retain", 2.0)):
        pdf = pd.DataFrame({"id": range(12), "text": [f"word{i % 3} spam{i % 2}" for i in range(12)],
                            "features": list(rng.standard_normal((12, 2)) + shift)})
        paths[domain] = str(tmp_path / domain)
        spark.createDataFrame(pdf, "id long, text string, features array<double>").write.format("delta").save(
            paths[domain])
    base = dict(methods=("lr_gauss",), budgets=(0.5,), budget_counts=())
    run_pipeline(spark, make_config(tmp_path, paths["forget"], paths["retain"], text_col="text", text_dim=2,
                                    run_id="as-text", **base))
    report = run_pipeline(spark, make_config(tmp_path, paths["forget"], paths["retain"], run_id="as-features",
                                             **base))
    assert report.statistics_mode == "full"
    stats = read_delta(tmp_path / "out" / "statistics")
    mean = stats[(stats.run_id == "as-features") & (stats.domain == "forget")]["mean"].iloc[0]
    features = read_delta(paths["forget"]).sort_values("id")["features"]
    np.testing.assert_allclose(np.asarray(mean), np.vstack(features).mean(0), rtol=1e-12)


def test_text_with_stratified_groups(spark, corpus, tmp_path):
    """--group-col on text input: the group passes through the featurizer, and each group's part
    of a stratified set is the top of the reference lr_ngram scores within the group."""
    from pyspark.sql import functions as F

    from distunlearn.core.groups import apportion

    _, paths, sample = corpus
    grouped = {}
    for domain in ("forget", "retain"):
        df = spark.read.format("delta").load(paths[domain]).withColumn("src", (F.col("id") % 3 == 0).cast("string"))
        grouped[domain] = str(tmp_path / domain)
        df.write.format("delta").save(grouped[domain])
    cfg = make_config(tmp_path, grouped["forget"], grouped["retain"], text_col="text", ngram_hash="sha256",
                      ngram_buckets=1024, text_dim=8, methods=("lr_ngram", "mu2"), budgets=(0.5,), budget_counts=(),
                      run_id="text-groups", group_col=("src",), group_budget="stratified")
    run_pipeline(spark, cfg)
    ids, scores, _ = _reference_scores(sample, 1024, 1.0)
    src = np.where(ids % 3 == 0, "true", "false")
    sets = read_sets(Path(cfg.output))
    ours = sets[sets.method == "lr_ngram"]
    quotas = apportion(20, {g: int((src == g).sum()) for g in ("true", "false")})
    assert sum(quotas.values()) == 20 and len(ours) == 20
    for g, q in quotas.items():
        mask = src == g
        assert sorted(ours[ours.group == g].id) == sorted(_top(ids[mask], scores[mask], q))
