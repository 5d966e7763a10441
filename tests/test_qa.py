"""Tests for realm_jax.data.qa_data: normalization, EM, regex, recall, spans."""
import json

import numpy as np
import pytest

from realm_jax.data import qa_data


@pytest.mark.parametrize("text, expected", [
    # lower -> strip punctuation (hyphen and comma vanish, no space) ->
    # drop articles -> collapse whitespace.
    ("The  Quick, Brown-Fox!", "quick brownfox"),
    ("U.S.A.", "usa"),
    ("an apple a day", "apple day"),
    # Articles only as whole words.
    ("Theater of Anatomy", "theater of anatomy"),
    # Curly quotes are not in string.punctuation, so the official script keeps
    # them.
    ("\u201chello\u201d", "\u201chello\u201d"),
    # NFD splits accents into combining marks, which are not word characters,
    # so "the" and "a" become whole words and are dropped: the official
    # SQuAD/ORQA behaviour, reproduced on purpose.
    ("Th\u00e9\u00e2tre", "\u0301 \u0302tre"),
    ("\t  \n", ""),
])
def test_normalize_answer_matches_squad_orqa_definition(text, expected):
  assert qa_data.normalize_answer(text) == expected


def test_exact_match_takes_max_over_references():
  assert qa_data.exact_match("the Beatles.", ["Rolling Stones", "Beatles"])
  assert not qa_data.exact_match("Beatles band", ["The Beatles"])
  assert not qa_data.exact_match("anything", [])
  assert qa_data.is_correct("A Tale of Two Cities", ["tale of two cities"])


def test_regex_match_is_anchored_case_blind_and_tolerates_bad_patterns():
  assert qa_data.regex_match("1945 AD", [r"19[45]5"])
  assert qa_data.regex_match("PARIS", ["paris"])
  # re.match anchors at the start of the prediction (ORQA), not re.search.
  assert not qa_data.regex_match("in 1945", ["1945"])
  # A pattern that does not compile counts as no match instead of raising.
  assert not qa_data.regex_match("(", ["("])
  assert qa_data.regex_match("Mt. Everest", ["(", r"Mt\.? Everest"])
  assert qa_data.is_correct("paris, france", ["Paris"], is_regex=True)
  assert not qa_data.is_correct("paris, france", ["Paris"], is_regex=False)


def test_has_answer_modes():
  text = "The capital of France is Paris. Parisian food is famous."
  assert qa_data.has_answer(text, ["paris"])  # normalized: case-blind
  assert not qa_data.has_answer("Parisian food", ["paris"])  # whole tokens only
  assert qa_data.has_answer("Parisian food", ["Paris"], match="raw")
  assert not qa_data.has_answer("Parisian food", ["paris"], match="raw")
  assert qa_data.has_answer(text, [r"pari[sz]\b"], match="regex")
  # An answer that normalizes to nothing must not match every block.
  assert not qa_data.has_answer(text, ["The"])
  with pytest.raises(ValueError, match="match must be one of"):
    qa_data.has_answer(text, ["x"], match="fuzzy")


def test_recall_at_k_hand_computed():
  hits = np.array([[0, 1, 0],
                   [0, 0, 0],
                   [1, 0, 0],
                   [0, 0, 1]], dtype=bool)
  assert qa_data.recall_at_k(hits, ks=(1, 2, 3, 10)) == {
      1: 0.25, 2: 0.5, 3: 0.75, 10: 0.75}


def test_retrieval_hits_from_block_texts():
  blocks = [["Berlin is big.", "Paris, in France."], ["Nothing here."]]
  answers = [["paris"], ["Lu Xun"]]
  hits = qa_data.retrieval_hits(blocks, answers)
  np.testing.assert_array_equal(hits, [[False, True], [False, False]])
  assert qa_data.recall_at_k(hits, ks=(1, 2)) == {1: 0.0, 2: 0.5}
  with pytest.raises(ValueError, match="must match"):
    qa_data.retrieval_hits(blocks, answers[:1])


def test_answer_token_spans_only_inside_block():
  # [CLS] 5 6 [SEP] | 5 6 7 5 6 | [SEP] pad
  ids = np.array([101, 5, 6, 102, 5, 6, 7, 5, 6, 102, 0])
  block = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
  spans = qa_data.answer_token_spans(ids, block, [[5, 6], [7], [6, 7, 5], [5, 6]])
  # [5, 6] in the question (positions 1-2) does not count; duplicate answers
  # give one span each.
  assert spans == [(4, 5), (5, 7), (6, 6), (7, 8)]
  assert qa_data.answer_token_spans(ids, block, [[5, 6], [6, 7, 5]],
                               max_width=2) == [(4, 5), (7, 8)]
  # A span running into the final [SEP] is outside the block.
  assert qa_data.answer_token_spans(ids, block, [[6, 102]]) == []


def test_gold_span_arrays_pad_and_truncate():
  ids = np.array([[101, 9, 102, 4, 4, 102],
                  [101, 9, 102, 8, 8, 102]])
  block = np.array([[0, 0, 0, 1, 1, 0]] * 2)
  starts, ends = qa_data.gold_span_arrays(ids, block, [[4]], max_spans=3)
  np.testing.assert_array_equal(starts, [[3, 4, -1], [-1, -1, -1]])
  np.testing.assert_array_equal(ends, [[3, 4, -1], [-1, -1, -1]])
  starts, _ = qa_data.gold_span_arrays(ids, block, [[4]], max_spans=1)
  np.testing.assert_array_equal(starts, [[3], [-1]])


def test_jsonl_round_trip(tmp_path):
  path = tmp_path / "CuratedTrec.resplit.test.jsonl"
  examples = [{"question": "who wrote hamlet", "answer": ["Shakespeare"]},
              {"question": "caf\u00e9?", "answer": [r"19[45]5", "x"]}]
  assert qa_data.write_qa_jsonl(path, examples) == 2
  with open(path, "a") as f:
    f.write("\n")  # a trailing blank line is tolerated
  assert qa_data.read_qa_jsonl(path) == examples


@pytest.mark.parametrize("line, message", [
    ('{"question": "q", "answer": ["a"]', "line 2: invalid JSON"),
    ('{"question": "q"}', "line 2: missing key 'answer'"),
    ('{"question": "q", "answer": "a"}',
     "line 2: 'answer' must be a non-empty"),
    ('{"question": "q", "answer": []}', "line 2: 'answer' must be a non-empty"),
    ('{"question": 3, "answer": ["a"]}', "line 2: 'question' must be a string"),
    ('["q", ["a"]]', "line 2: expected a JSON object"),
])
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  good = json.dumps({"question": "q", "answer": ["a"]})
  path.write_text(good + "\n" + line + "\n")
  with pytest.raises(ValueError, match=message):
    qa_data.read_qa_jsonl(path)


def test_a_byte_order_mark_is_skipped(tmp_path):
  path = tmp_path / "bom.jsonl"
  path.write_text('\ufeff{"question": "q", "answer": ["a"]}\n',
                  encoding="utf-8")
  assert qa_data.read_qa_jsonl(path) == [{"question": "q", "answer": ["a"]}]
