"""How the predictor chooses: reciprocal-rank fusion of BM25 and the dense
retriever (retrieval=hybrid), and answers the wh-word rules out
(eval.answer_types)."""
import numpy as np
import pytest

from realm_jax.qa import answer_rules


def test_a_block_both_rankings_hold_beats_one_ranked_first_by_one():
  bm25 = np.array([[7, 3, 5]])
  dense = np.array([[9, 3, 7]])
  # 3 is second in both, 7 first and third, 9 and 5 in one ranking only.
  assert answer_rules.fuse_ranks(bm25, dense, 4).tolist() == [[7, 3, 9, 5]]


def test_ties_go_to_the_first_ranking_and_padding_is_skipped():
  bm25 = np.array([[1, 2, -1], [4, -1, -1]])
  dense = np.array([[5, 6, -1], [-1, -1, -1]])
  assert answer_rules.fuse_ranks(bm25, dense, 3).tolist() == [[1, 5, 2],
                                                           [4, -1, -1]]


@pytest.mark.parametrize("question, answer, wrong", [
    ("How many moons does Mars have?", "two", False),
    ("How many moons does Mars have?", "6,779 km", False),
    ("How many moons does Mars have?", "Phobos", True),
    ("When did the bridge open?", "in 1987", False),
    ("When did the bridge open?", "Rotterdam", True),
    ("In what year was Quill Robotics founded?", "2011", False),
    ("In what year was Quill Robotics founded?", "Rotterdam", True),
    ("Who founded Quill Robotics?", "Ada Brenner", False),
    ("Who founded Quill Robotics?", "2011", True),
    ("Who wrote The Salt Orchard?", "Norwegian writer Hanne Vosberg", False),
    ("Where was Mirela Dantes born?", "Coimbra", False),
    ("Where was Mirela Dantes born?", "northern highlands", True),
    ("What is the population of Lyon?", "513,275", False),
    ("What is the population of Lyon?", "Rhone", True),
    ("What is the atomic number of neon?", "10", False),
    ("What is the atomic number of neon?", "Nitrogen", True),
    ("How old was Ada Brenner when she founded it?", "34", False),
    ("How old was Ada Brenner when she founded it?", "Rotterdam", True),
    ("What is the capital of Austria?", "Vienna", False),
    ("What is the capital of Austria?", "1918", True),
    ("Which city hosted the 1936 Olympics?", "Berlin", False),
    ("Which city hosted the 1936 Olympics?", "the summer games", True),
    ("Which element has atomic number 53?", "Iodine", False),
    ("Chemical element with atomic number 84 (Po)", "Polonium", False),
    ("What is the name of the ship?", "1918", False),   # what: anything
])
def test_the_wh_word_rules_out_answers_of_another_type(question, answer,
                                                       wrong):
  words = answer_rules.question_words(question)
  assert answer_rules.wrong_type(answer, words) == wrong


def test_a_block_whose_answer_fits_beats_a_higher_one_that_does_not():
  joint = {0: 5.0, 1: 3.0, 2: 3.0}
  assert answer_rules.best_block(joint, {0: False, 1: True, 2: True}) == 1
  assert answer_rules.best_block(joint, {0: True, 1: True, 2: True}) == 0
  # None fits: the joint argmax, as without the rules.
  assert answer_rules.best_block(joint, {0: False, 1: False, 2: False}) == 0
