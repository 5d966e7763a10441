"""Reading questions whose answer is the passage's own subject.

question_gen.py asks about spans inside a sentence, never about the title:
alone, its questions teach a reader that a wh-question's answer is never the
subject of the passage it reads, and "Who composed the opera Venethlo?",
read in the composer's own page, gets a place. These questions are the
other half: where a sentence's subject is the document's subject (the
title, a longer or shorter form of it, or a pronoun), the subject becomes
the wh-word and the predicate stays as it was, as people ask:

  "Dargal wrote the opera Venethlo."         -> "Who wrote the opera Venethlo?"
  "Vienna is the capital of Austria."        -> "What is the capital of Austria?"
  "He was born in Salzburg in 1756."          -> "Who was born in Salzburg in 1756?"

The gold answer is the title (less a disambiguation suffix), with the
sentence's own mention ("Eric John Ernest Hobsbawm", "Dargal") as an
alternative. "who" asks for a person: a he/she subject, or a mention the
tagger labels PERSON; "what" everything else. Where the document says what
its subject is ("Osror Dargal is a composer from Vingalheim"), half of its
questions (by hash) ask "which" of that category, as people often do
("Which composer wrote the opera Venethlo?"): a "which" question then has
subject answers as well as inside ones.
"""
import hashlib
import re

from realm_jax.data import demo_corpus

_ARTICLES = frozenset({"the", "a", "an"})
_PERSON_PRONOUNS = frozenset({"he", "she"})
_THING_PRONOUNS = frozenset({"it"})
# Words that cannot start a predicate: the subject goes on ("Mozart and
# Haydn", "Paris of the ...", "Mozart's father").
_NOT_A_PREDICATE = frozenset({
    "and", "or", "of", "in", "on", "at", "for", "with", "to", "from", "by",
    "as", "who", "which", "whose", "that", "whom", "but", "nor", "than",
    "also", "de", "da", "von", "van"})
MAX_MENTION_WORDS = 6
MIN_PREDICATE_WORDS = 2
MAX_PREDICATE_WORDS = 14
# "X is the Y" needs more than "is the belief" to ask one thing.
MIN_COPULAR_WORDS = 4
_COPULAS = frozenset({"is", "was", "are", "were"})
# Not the comma of "207,600", nor the period of "U.S." or "Robert A.".
_CLAUSE_END = re.compile(r"[;:()\[\]]|,(?!\d)|(?<![A-Z])\.(\s|$)")


def _words(text: str) -> list[str]:
  return re.findall(r"[\w'’-]+", text.lower())


def subject_mention(sentence: str, title: str) -> str | None:
  """The sentence's opening mention of the document's subject: a subject
  pronoun, or up to MAX_MENTION_WORDS words (an article first allowed) that
  end on a word of the title and hold no word foreign to a name; None if
  the sentence opens with anything else."""
  words = sentence.split()
  if not words:
    return None
  first = words[0].lower()
  if first in _PERSON_PRONOUNS | _THING_PRONOUNS:
    return words[0]
  title_words = _words(demo_corpus.short_title(title))
  start = 1 if first in _ARTICLES else 0
  for i in range(start, min(len(words), start + MAX_MENTION_WORDS)):
    if words[i][-1:] in ",;:":
      return None   # an apposition: "One oomycete, the mycoparasite ..."
    word = _words(words[i])
    if word and title_words and word[-1] == title_words[-1]:
      # The name ends on the title's own last word: "Eric John Ernest
      # Hobsbawm", "The island", "Dargal"; not "Military" of "Military rank".
      return " ".join(words[:i + 1])
    if not (word and (word[-1] in title_words or words[i][:1].isupper())):
      return None   # a lowercase word foreign to the title
  return None


def question_for(sentence: str, title: str, mention_label: str | None = None
                 ) -> dict | None:
  """{"question", "answer": [title, the mention]} asking for the subject of
  `sentence`, or None where its subject is not the document's, or its
  predicate no question (too short, too long, or it names the answer)."""
  mention = subject_mention(sentence, title)
  if mention is None:
    return None
  rest = sentence[len(mention):]
  if not rest.startswith(" "):
    return None   # "Mozart's", "Mozart," : the subject goes on
  end = _CLAUSE_END.search(rest)
  predicate = (rest[:end.start()] if end else rest).split()
  least = (MIN_COPULAR_WORDS if predicate[:1] and predicate[0] in _COPULAS
           else MIN_PREDICATE_WORDS)
  if (not least <= len(predicate) <= MAX_PREDICATE_WORDS
      or not predicate[0].isalpha() or not predicate[0].islower()
      or predicate[0] in _NOT_A_PREDICATE
      or predicate[-1].lower() in _NOT_A_PREDICATE | _ARTICLES):
    return None   # "... character who", cut at a comma
  subject = demo_corpus.short_title(title)
  question = " ".join(predicate)
  named = set(_words(subject)) | set(_words(mention))
  if named & set(_words(question)) - {"the", "a", "an", "of"}:
    return None   # the question would give the answer away
  person = (mention.lower() in _PERSON_PRONOUNS or mention_label == "PERSON")
  wh = "Who" if person else "What"
  first, _, rest = mention.partition(" ")
  bare = rest if first.lower() in _ARTICLES and rest else mention
  pronoun = bare.lower() in _PERSON_PRONOUNS | _THING_PRONOUNS
  alternatives = [] if pronoun or bare.lower() == subject.lower() else [bare]
  return {"question": f"{wh} {question}?", "answer": [subject, *alternatives]}


# A category noun ends before these: "a composer from ...", "a film directed
# by ...", "a composer and lyricist".
_CATEGORY_END = frozenset({
    "of", "in", "from", "who", "that", "which", "with", "and", "or", "for",
    "by", "on", "at", "to", "whose", "where", "known", "based", "located",
    "born", "founded", "directed", "written", "released", "published",
    "used", "made", "created", "named", "called", "considered"})
# Too vague to ask "which" of: "Which form ...?"
_VAGUE = frozenset({"form", "type", "kind", "group", "branch", "member",
                    "part", "term", "set", "class", "way", "piece", "number",
                    "collection", "method", "process", "field", "variety"})
_ADJECTIVE_ENDINGS = ("al", "ed", "ic", "ous", "ive", "ful", "ly", "less")
MAX_CATEGORY_WORDS = 8
WHICH_PERCENT = 50


def category(sentence: str, title: str) -> str | None:
  """What a defining sentence says its subject is: "composer" of "Osror
  Dargal is a composer from Vingalheim", "university" of "Yale University
  is a private Ivy League research university in New Haven"; None if the
  sentence is not "<the subject> is/was a(n) ...". The noun is the last
  lowercase word before a preposition, a relative or a comma."""
  mention = subject_mention(sentence, title)
  words = sentence[len(mention):].split() if mention else []
  if words[:1] not in (["is"], ["was"]) or words[1:2] not in (["a"], ["an"]):
    return None
  head = None
  for word in words[2:2 + MAX_CATEGORY_WORDS]:
    bare = word.rstrip(",;:.")
    if bare.lower() in _CATEGORY_END or bare.endswith("ing"):
      break
    if bare.replace("-", "").isalpha() and bare.islower():
      head = bare
    if bare != word:
      break   # the noun phrase ends at the punctuation
  if head is None or head in _VAGUE or head.endswith(_ADJECTIVE_ENDINGS):
    return None   # "a cultural and financial centre": no noun found
  return head


class Asker:
  """question_for with each document's category: "Which composer ...?"
  for WHICH_PERCENT of the questions of a document with one (by hash).

  Args:
    records: the {"text", "source_uid"} sentences questions are made from;
      the first sentence of a document that has a `category` gives it.
    title_of: source_uid -> the document title.
  """

  def __init__(self, records, title_of):
    self.categories = {}
    for record in records:
      title = title_of(record["source_uid"])
      if title not in self.categories:
        found = category(record["text"], title)
        if found:
          self.categories[title] = found

  def __call__(self, sentence: str, title: str, spans) -> dict | None:
    example = question_for(sentence, title, label_at_start(spans))
    noun = self.categories.get(title)
    digest = hashlib.sha1(sentence.encode("utf-8")).hexdigest()
    if (example and noun and int(digest[:8], 16) % 100 < WHICH_PERCENT
        and noun not in _words(example["question"])):   # "an English actress"
      example["question"] = f"Which {noun} " + example["question"].split(
          " ", 1)[1]
    return example


def label_at_start(spans) -> str | None:
  """The NER label of the (span, label) that opens the sentence, if any."""
  return next((label for span, label in spans if span[0] <= 4), None)
