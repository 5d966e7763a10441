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


@pytest.mark.parametrize("sentence, title, noun", [
    ("Osror Dargal is a composer from Vingalheim.", "Osror Dargal",
     "composer"),
    ("Yale University is a private Ivy League research university in New "
     "Haven, Connecticut.", "Yale University", "university"),
    ("Irving Berlin was a Russian-born American composer and lyricist.",
     "Irving Berlin", "composer"),
    ("Mirror is a 1975 Soviet art film directed by Andrei Tarkovsky.",
     "Mirror (1975 film)", "film"),
    ("Neon is a chemical element with the symbol Ne.", "Neon", "element"),
    # No noun, a vague one, or not a defining sentence: no category.
    ("Baghdad is a cultural and financial centre.", "Baghdad", None),
    ("Rope is a group of yarns.", "Rope", None),
    ("Vienna lies on the Danube.", "Vienna", None),
    ("The capital is Vienna.", "Austria", None),
])
def test_a_defining_sentence_gives_its_subjects_category(sentence, title,
                                                          noun):
  assert sq.category(sentence, title) == noun


def test_a_document_with_a_category_asks_which_for_half_its_questions():
  facts = [f"Dargal wrote the opera number {i} for the court in {1900 + i}."
           for i in range(40)]
  records = [{"text": t, "spans": [], "source_uid": "a"} for t in
             ["Osror Dargal is a composer from Vingalheim."] + facts]
  ask = sq.Asker(records, lambda uid: "Osror Dargal")
  assert ask.categories == {"Osror Dargal": "composer"}
  questions = [ask(t, "Osror Dargal", [((0, 6), "PERSON")])["question"]
               for t in facts]
  which = [q for q in questions if q.startswith("Which composer wrote ")]
  assert 10 <= len(which) <= 30, questions   # WHICH_PERCENT = 50, by hash
  assert all(q.startswith(("Which composer wrote ", "Who wrote "))
             for q in questions)
  # The category is never asked of a sentence that already says it.
  said = ask("Dargal is a composer of operas and songs.", "Osror Dargal",
             [((0, 6), "PERSON")])
  assert said is None or "Which composer" not in said["question"]


def test_generated_kinds_keeps_only_the_kinds_named(tmp_path):
  from realm_jax import config as config_lib
  from realm_jax.data import catalog
  c = config_lib.default_config()
  c.finetune.generated_kinds = "subject,elsewhere"
  c.finetune.generated_fraction = 1.0
  with pytest.raises(ValueError, match="generated_kinds"):
    catalog.training_questions(c, store=None)


def test_the_wh_table_gives_each_wh_words_share_of_subject_answers():
  from realm_jax.data import catalog
  table = catalog.wh_table([
      {"question": "Who wrote Venethlo?", "kind": "subject"},
      {"question": "Who was born in Vingalheim?", "kind": "inside"},
      {"question": "In what year was Venethlo first performed?",
       "kind": "inside"},
      {"question": "How many operas did he write?", "kind": "inside"},
      {"question": "Composer from Vingalheim", "kind": "subject"}]).split("\n")
  assert table[2] == "| who | 2 | 50% |"
  assert set(table[3:]) == {"| what | 1 | 0% |", "| how many | 1 | 0% |",
                            "| none | 1 | 100% |"}
