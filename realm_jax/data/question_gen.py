"""Reading questions made offline from any corpus: answers inside passages.

Description -> title pairs teach a reader to name the subject of the block
it reads. To teach it to read, fine-tuning also draws questions whose answer
is a salient span inside a sentence (finetune.generated_fraction). They are
made by rule from the NER-tagged sentences that pretraining already caches
(data/ner.py), following the unsupervised-QA recipes:

* the answer is a salient span (a named entity or a date), as in Lewis et
  al. 2019 ("Unsupervised Question Answering by Cloze Translation"), or a
  count before a noun ("16 boroughs"); its label chooses the wh-word
  (PERSON -> who, a date after "in" -> when or, for a year, half the time
  "in what year", a bare year -> what year, a place after "in"/"at" ->
  where, a count -> how many, ...);
* the question is the answer's whole clause with the answer replaced by
  the wh-word. Where a form of "to be" follows the clause's subject, the
  wh-word and the verb move to the front, as people ask ("Amazon was
  founded by Jeff Bezos" -> "Who was Amazon founded by?", "Mozart was born
  in Salzburg" -> "Where was Mozart born?"). Elsewhere one of two forms is
  drawn by a hash: the wh-word in place (Lewis et al.'s rule-based cloze
  translation: "Lima lies on the coast of what?") or first with the rest
  as it was (Fabbri et al. 2020's "Wh + sentence" template, their best:
  "What Lima lies on the coast of?"); without it natural questions, which
  mostly start with their wh-word, read worse (README). A clause longer than
  MAX_BEFORE_WORDS before the answer gives no question (cut, it started
  mid-clause), nor does an answer in a list or an apposition ("in X, Y and
  [Z]");
* the question must name its subject: a leading pronoun becomes the title
  ("It is ..." -> "Denver is ..."), and a clause that does not mention the
  title is prefixed with it ("Denver: ...").

Fabbri et al. also retrieve a *different* sentence with the answer to lower
the lexical overlap; here the retriever, trained jointly, finds the block by
other words. Answers equal to the title are left out here, as are
answers that occur in the question's own words: where a sentence's subject
is its document's, subject_percent in 100 ask for that subject instead
(subject_questions.py), so that no wh-word tells where its answer is.

Every question keeps its document's title, and `split_of` assigns whole
documents to "train" (90%) or "heldout" (10%) by a hash of the title, so
held-out questions ask about documents the reader never trained on.
"""
import hashlib
import re
from typing import Iterable

from realm_jax.data import demo_corpus
from realm_jax.data import subject_questions

# wh-word by OntoNotes label; places and dates depend on the word before.
# The small tagger's other labels are too noisy ("Sun" as ORG) for more than
# "what".
_WH = {"PERSON": "who", "NORP": "what nationality", "LANGUAGE": "what language"}
_PLACES = frozenset({"GPE", "LOC", "FAC"})
_PLACE_PREPOSITIONS = frozenset({"in", "at", "near"})
_DATE_PREPOSITIONS = frozenset({"in", "on", "during"})
_SUBJECT_PRONOUNS = frozenset({"it", "he", "she", "they"})
_POSSESSIVES = frozenset({"its", "his", "her", "their"})
_CLAUSE_BREAK = re.compile(r"[;:()\[\]]")
_ARTICLES = frozenset({"the", "a", "an"})
# Sentence-initial words that are lowercased when the wh-word goes first.
_FUNCTION_WORDS = frozenset({"the", "a", "an", "in", "on", "at", "it", "he",
                             "she", "they", "its", "his", "her", "their",
                             "this", "these", "as", "with", "by", "from",
                             "after", "before", "during", "since", "for"})
_YEAR = re.compile(r"^\d{3,4}$")
# The verb that moves to the front with the wh-word, when one of the clause's
# first words ("The Loire river is ..." -> "What is the Loire river ...").
_BE = frozenset({"is", "was", "are", "were"})
MAX_SUBJECT_WORDS = 5
_LISTS = frozenset({"and", "or"})
_RELATIVES = frozenset({"who", "which", "whose", "that", "whom"})
# A count: digits or a number word, then a lowercase word that is not a unit
# of the number itself ("16 boroughs", "six species"; not "2 million").
_COUNT = re.compile(
    r"(?<![\w.,$£€%-])(\d{1,3}(?:,\d{3})*|two|three|four|five|six|seven|eight|"
    r"nine|ten|eleven|twelve)(?= (?!(?:million|billion|thousand|hundred|"
    r"percent|per|of|to|and|or|in|on|at|by)\b)[a-z]{3,})", re.IGNORECASE)
# Passive to active, as people ask (Heilman and Smith 2010's rule-based
# question transformations): "X was founded by [Y]" -> "Who founded X?". The
# past tense of a participle: the same word for "-ed" and for the irregular
# verbs where they agree ("built", "led"), else this table.
_PAST_OF = {"written": "wrote", "drawn": "drew", "sung": "sang",
            "begun": "began", "given": "gave", "taken": "took",
            "shown": "showed", "chosen": "chose", "driven": "drove",
            "spoken": "spoke", "stolen": "stole", "beaten": "beat",
            "sworn": "swore", "known": "knew", "grown": "grew",
            "thrown": "threw", "undertaken": "undertook",
            "overthrown": "overthrew", "rewritten": "rewrote",
            "forgotten": "forgot", "ridden": "rode", "eaten": "ate",
            "seen": "saw", "done": "did", "flown": "flew"}
_SAME_PAST = frozenset({"built", "led", "made", "won", "held", "sold",
                        "bought", "taught", "brought", "fought", "caught",
                        "told", "paid", "sent", "struck", "shot", "set",
                        "hit", "found", "left", "lost", "kept", "read",
                        "run", "bred", "fed", "bound", "spun", "dug", "shut"})
# The category an answer names in its last word: "which" asks for it, as
# people do ("Which river runs through Nashville?" -> "Cumberland River").
_CATEGORIES = frozenset({
    "river", "lake", "sea", "ocean", "bay", "gulf", "strait", "island",
    "islands", "mountain", "mountains", "desert", "valley", "peninsula",
    "canal", "university", "college", "school", "party", "church", "empire",
    "kingdom", "dynasty", "republic", "war", "battle", "treaty", "award",
    "prize", "festival", "museum", "palace", "castle", "cathedral", "bridge",
    "stadium", "airport", "station", "street", "square", "park", "company",
    "army", "revolution", "rebellion", "movement", "council", "league",
    "cup", "championship", "orchestra", "band"})
MAX_BEFORE_WORDS, MAX_AFTER_WORDS, MAX_ANSWER_WORDS = 14, 8, 6
HELDOUT_PERCENT = 10
# Wikipedia calls nearly every person "an American ...": unthinned, a fifth
# of the questions ask a nationality. Three in four are dropped.
NATIONALITY_KEEP_PERCENT = 25


def _hash(text: str) -> int:
  return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16)


def split_of(title: str) -> str:
  """"train" or "heldout": a fixed share of documents by hash of the title."""
  return "heldout" if _hash(title) % 100 < HELDOUT_PERCENT else "train"


def wh_phrase(label: str | None, answer: str, previous_word: str,
              draw: int = 0):
  """(wh-phrase, whether it replaces the word before the answer too); `draw`
  picks "when" or "in what year" for a year after "in", half each."""
  prev = previous_word.lower()
  if label == "COUNT":
    return "how many", False
  if label == "DATE":
    if prev == "in" and _YEAR.match(answer) and draw % 2:
      return "in what year", True
    if prev in _DATE_PREPOSITIONS:
      return "when", True
    return ("what year" if _YEAR.match(answer) else "when"), False
  if label in _PLACES:
    if prev in _PLACE_PREPOSITIONS:
      return "where", True
    return "what", False
  return _WH.get(label, "what"), False


def _past(participle: str) -> str | None:
  """The simple past of a past participle, None if not one we know."""
  word = participle.lower()
  if word in _PAST_OF:
    return _PAST_OF[word]
  if word in _SAME_PAST or (word.endswith("ed") and len(word) > 4):
    return word
  return None


def _active(before: list[str], wh: str) -> list[str] | None:
  """wh + past + subject for an answer after a passive "by": "Amazon was
  founded by" -> "who founded Amazon"; "La traviata is an opera composed
  by" -> "who composed the opera La traviata". None where the clause is
  not "subject, a form of to be, [a noun,] a participle, by"."""
  if len(before) < 4 or before[-1].lower() != "by":
    return None
  past, be = _past(before[-2]), _be_after_subject(before[:-2])
  if past is None or be is None:
    return None
  subject, middle = _lowered(before[:be]), before[be + 1:-2]
  if middle and middle[0].lower() in _ARTICLES and len(middle) <= 6:
    # "is a 1975 Soviet film directed by" -> "the 1975 Soviet film Mirror"
    subject = ["the"] + middle[1:] + subject
  elif middle or before[be].lower() not in ("was", "were"):
    # "was later sold by", "is one of the works painted by"; "is bordered
    # by" would need the present tense ("what borders").
    return None
  return [wh, past] + subject


def _life_event(before: list[str], title: str, wh: str) -> list[str] | None:
  """ "When did Henry II die?" for "... until his death in [1189]" or "He
  died in [Paris]", "When was Mozart born?" for "He was born on [27
  January 1756]": the most asked facts of a biography, which the clause's
  own words cannot ask without do-support. None for anything else, and
  where the one who died may not be the title ("... Hunyadi, who died in")."""
  if len(before) < 2 or before[-1].lower() not in ("in", "on", "at"):
    return None
  event, words = before[-2].lower(), [w.lower() for w in before[:-2]]
  if event == "death":
    owner = words[-1] if words else ""
    if owner not in _POSSESSIVES and owner != f"{title.lower()}'s":
      return None
  elif event in ("died", "born"):
    if not words or (words[0] not in _SUBJECT_PRONOUNS and not " ".join(
        before).lower().startswith(title.lower())) or _RELATIVES & set(words):
      return None
  else:
    return None
  return ([wh, "was", title, "born"] if event == "born"
          else [wh, "did", title, "die"])


def _which(answer: str, wh: str, draw: int) -> str:
  """ "which river" for half the answers that end in a category word."""
  last = answer.split()[-1].lower()
  if wh == "what" and last in _CATEGORIES and draw % 4 < 2:
    return f"which {last}"
  return wh


def _clause_before(text: str) -> list[str] | None:
  """The words of the answer's clause before it; None if over
  MAX_BEFORE_WORDS (a question cut there would start mid-clause)."""
  cut = max((m.end() for m in _CLAUSE_BREAK.finditer(text)), default=0)
  words = text[cut:].split()
  return words if len(words) <= MAX_BEFORE_WORDS else None


def _clause_after(text: str, opens_clause: bool) -> list[str]:
  if opens_clause:           # "In 1990, X did Y": the clause goes on
    text = text.lstrip(" ,")
  m = re.search(r"[,;:()\[\]]|\.(\s|$)", text)
  return (text[:m.start()] if m else text).split()[:MAX_AFTER_WORDS]


def _be_after_subject(words: list[str]) -> int | None:
  """The index of the first form of "to be" after a subject of at most
  MAX_SUBJECT_WORDS words, None if none ("There is ..." has no subject)."""
  if not words or words[0].lower() == "there":
    return None
  return next((i for i in range(1, min(len(words), MAX_SUBJECT_WORDS + 1))
               if words[i].lower() in _BE), None)


def _inverted(before: list[str], wh: str) -> list[str] | None:
  """wh + verb + subject + the rest, when a form of "to be" follows the
  subject ("Amazon was founded by" -> "who was Amazon founded by")."""
  i = _be_after_subject(before)
  if i is None:
    return None
  return [wh, before[i].lower()] + _lowered(before[:i]) + before[i + 1:]


def _lowered(words: list[str]) -> list[str]:
  """A sentence-initial function word lowercased, as the wh-word goes first."""
  if words[0].lower() in _FUNCTION_WORDS:
    return [words[0].lower()] + words[1:]
  return words


def _name_subject(words: list[str], title: str) -> list[str]:
  """A leading pronoun becomes the title ("Its" -> "Title's")."""
  if words and words[0].lower() in _SUBJECT_PRONOUNS:
    return [title] + words[1:]
  if words and words[0].lower() in _POSSESSIVES:
    return [title + "'s"] + words[1:]
  return words


def _mentions(question: str, title: str) -> bool:
  q = question.lower()
  return any(w.lower() in q for w in re.findall(r"\w{3,}", title)) or not (
      re.search(r"\w", title))


def _glued(sentence: str, start: int, limit: int) -> bool:
  """The span is part of a longer token: "Indo-[European]", "[Earth]'s",
  "[Tigris]–Euphrates". Cut out, it leaves a broken question ("entering 's
  atmosphere") and an answer no whole-word span of the block matches."""
  before = sentence[start - 1] if start > 0 else " "
  after = sentence[limit] if limit < len(sentence) else " "
  return not ((before.isspace() or before in "(\"“")
              and (after.isspace() or after in ",.;:)!?\"”"))


def question_for(sentence: str, span: tuple[int, int], label: str | None,
                 title: str) -> dict | None:
  """{"question", "answer": [span text]} for one salient span, or None when
  the span is no good answer (the title, too long, repeated in the
  question, one of a list) or its clause no good question (too long to keep
  whole, too short)."""
  start, limit = span
  answer = sentence[start:limit].strip()
  if _glued(sentence, start, limit):
    return None
  short_title = demo_corpus.short_title(title)
  if (not answer or len(answer.split()) > MAX_ANSWER_WORDS
      or answer.lower() in (title.lower(), short_title.lower())):
    return None
  draw = _hash(sentence + answer) % 100   # fixed per answer, not random
  if label == "NORP" and draw >= NATIONALITY_KEEP_PERCENT:
    return None
  before = _clause_before(sentence[:start])
  if before is None:
    return None
  after = _clause_after(sentence[limit:], opens_clause=not before)
  if ((before and (before[-1].endswith(",") or before[-1].lower() in _LISTS))
      or (after and after[0].lower() in _LISTS)):
    return None   # one of a list or an apposition: "in X, Y and [Z]"
  wh, replaces_previous = wh_phrase(label, answer,
                                    before[-1] if before else "", draw)
  life = (_life_event(before, short_title, wh) if replaces_previous
          else None)
  if life is not None:
    return _asked(life, answer, short_title)
  if replaces_previous or (before and before[-1].lower() in _ARTICLES):
    before = before[:-1]   # "in 1990" -> "when"; "the what" -> "what"
  before = _name_subject(before, short_title)
  if len(before) + len(after) < 3:
    return None            # too little of the sentence left to ask about
  if not replaces_previous:
    wh = _which(answer, wh, draw)
  movable = label != "COUNT"     # "how many" stays before its noun
  words = (_active(before, wh) if movable and draw % 5 and label != "NORP"
           else None)
  if words is None and movable:
    words = _inverted(before, wh)               # "to be" moves to the front
  if words is not None:
    words += after
  elif movable and draw % 2 and before:         # Fabbri et al.: wh first
    words = [wh] + _lowered(before) + after
  else:                                         # cloze translation in place
    words = before + [wh] + after
  return _asked(words, answer, short_title)


def _asked(words: list[str], answer: str, title: str) -> dict | None:
  """The question of `words`, capitalized, naming its subject, with "?";
  None if it gives the answer away."""
  question = " ".join(words).strip(" ,")
  question = question[0].upper() + question[1:]
  if not _mentions(question, title):
    question = f"{title}: {question}"
  if answer.lower() in question.lower():
    return None
  return {"question": question.rstrip(" .") + "?", "answer": [answer]}


def generate(records: Iterable[dict], title_of, split: str = "train",
             per_sentence: int = 1, subject_percent: int = 0) -> list[dict]:
  """Questions from NER-tagged sentences (ner.QueryRecords records).

  Args:
    records: {"text", "spans", "labels", "source_uid"} dicts (iterated
      twice with subject_percent: a sequence or ner.QueryRecords).
    title_of: source_uid -> the document title.
    split: "train", "heldout" (split_of the title) or "all".
    per_sentence: questions kept per sentence (spans in a fixed hashed order).
    subject_percent: of the sentences that can ask for their subject, the
      share (by hash) that does, instead of about a span inside.

  Returns:
    [{"question", "answer": [str], "kind", "title", "source_uid"}], in record
    order (source_uid: the block it was made from; kind: subject or inside).
  """
  out, ask_subject = [], subject_questions.Asker(
      records if subject_percent else (), title_of)
  for record in records:
    title = title_of(record["source_uid"])
    if split != "all" and split_of(title) != split:
      continue
    text = record["text"]
    spans = list(zip(record["spans"], record.get("labels") or
                     [None] * len(record["spans"])))
    subject = subject_percent and ask_subject(text, title, spans)
    inside = _inside(text, spans, title, per_sentence)
    if subject and _hash(text) % 100 < subject_percent:
      inside = [dict(subject, kind="subject")]
    out += [dict(e, title=title, source_uid=record["source_uid"])
            for e in inside]
  return out


def _inside(text: str, spans: list, title: str, per_sentence: int):
  """Up to per_sentence questions about its spans, in a hashed order."""
  out = []
  for span, label in sorted(spans + _counts(text, spans),
                            key=lambda sl: _hash(f"{text}{sl[0]}")):
    if len(out) == per_sentence:
      break
    example = question_for(text, tuple(span), label, title)
    if example is not None:
      out.append(dict(example, kind="inside"))
  return out


def _counts(text: str, spans) -> list[tuple]:
  """("COUNT" spans): a number before a lowercase word ("16 boroughs"), not
  inside a tagged span; a "how many" question asks for it."""
  taken = [tuple(span[:2]) for span, _ in spans]
  out = []
  for m in _COUNT.finditer(text):
    if not any(a < m.end() and m.start() < b for a, b in taken):
      out.append(((m.start(), m.end()), "COUNT"))
  return out


def from_store(store, records, split: str = "train",
               subject_percent: int = 0) -> list[dict]:
  """`generate` over a block store's query records (ner.QueryRecords)."""
  titles = {}
  for _, record in store.iter_records():
    titles[record["uid"]] = record["title"]
  return generate(records, titles.__getitem__, split,
                  subject_percent=subject_percent)
