"""Questions whose answer is the passage's own subject (subject_questions.py),
and the generator's mix of them with questions about spans inside."""
import pytest

from realm_jax.data import question_gen
from realm_jax.data import subject_questions as sq


@pytest.mark.parametrize("sentence, title, label, question, answers", [
    ("Dargal wrote the opera Venethlo, first performed in 1918.",
     "Osror Dargal", "PERSON", "Who wrote the opera Venethlo?",
     ["Osror Dargal", "Dargal"]),
    ("Vienna is the capital of Austria.", "Vienna", "GPE",
     "What is the capital of Austria?", ["Vienna"]),
    ("He was born in Salzburg in 1756.", "Wolfgang Amadeus Mozart", None,
     "Who was born in Salzburg in 1756?", ["Wolfgang Amadeus Mozart"]),
    ("Denver is the capital and most populous city of the U.S. state of "
     "Colorado.", "Denver", "GPE", "What is the capital and most populous "
     "city of the U.S. state of Colorado?", ["Denver"]),
    ("Eric John Ernest Hobsbawm was a British historian of the rise of "
     "industrial capitalism.", "Eric Hobsbawm", "PERSON",
     "Who was a British historian of the rise of industrial capitalism?",
     ["Eric Hobsbawm", "Eric John Ernest Hobsbawm"]),
    ("The island partly surrounds Wilkins Sound.", "Alexander Island", None,
     "What partly surrounds Wilkins Sound?", ["Alexander Island", "island"]),
])
def test_the_subject_becomes_the_wh_word(sentence, title, label, question,
                                         answers):
  got = sq.question_for(sentence, title, label)
  assert got == {"question": question, "answer": answers}


@pytest.mark.parametrize("sentence, title", [
    ("Mozart's father was a violinist.", "Wolfgang Amadeus Mozart"),
    ("One oomycete, the mycoparasite Pythium, attacks fungi.", "Oomycete"),
    ("In 1990, Denver hosted the games.", "Denver"),
    ("Military ranks are a system of hierarchical relationships.",
     "Military rank"),
    ("Deism is the belief, held by some, in a creator.", "Deism"),
    ("Salzburg lies on the Salzach river.", "Wolfgang Amadeus Mozart"),
    ("Mozart and Haydn were friends.", "Wolfgang Amadeus Mozart"),
])
def test_no_question_where_the_subject_is_not_the_documents(sentence, title):
  assert sq.question_for(sentence, title) is None


def _records():
  return [{"text": "Dargal wrote the opera Venethlo in Vingalheim in 1918.",
           "spans": [(0, 6), (35, 45), (49, 53)],
           "labels": ["PERSON", "GPE", "DATE"], "source_uid": "a"},
          {"text": "Vienna is the capital of Austria since 1918.",
           "spans": [(0, 6), (25, 32), (39, 43)],
           "labels": ["GPE", "GPE", "DATE"], "source_uid": "b"}]


def test_subject_percent_mixes_the_two_kinds():
  titles = {"a": "Osror Dargal", "b": "Vienna"}.__getitem__
  none = question_gen.generate(_records(), titles, "all")
  assert [q["kind"] for q in none] == ["inside", "inside"]
  every = question_gen.generate(_records(), titles, "all",
                                subject_percent=100)
  assert [q["kind"] for q in every] == ["subject", "subject"]
  assert every[0]["question"] == "Who wrote the opera Venethlo in Vingalheim in 1918?"
  assert every[0]["answer"] == ["Osror Dargal", "Dargal"]
  for q in none:   # an inside question never has the title as its answer
    assert q["answer"][0] not in ("Osror Dargal", "Dargal", "Vienna")
