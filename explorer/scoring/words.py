"""Words for the answer reader: tokens with offsets, stems, and the short lists of cue words.

Morphology comes from the Snowball English stemmer ("effusions" and "effusion" share "effus",
"tumorous" and "tumors" share "tumor"), so a condition named in the question is found in the
answer in any of its forms without a word list per condition. The lists below are closed classes
(answer words, negators, hedges, refusals) and one small table of findings that imply "abnormal".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

__all__ = ["Token", "tokens", "stem"]

_STEMMER = snowballstemmer.stemmer("english")
# British spellings that the stemmer does not merge with the American ones.
_SPELLING = {
    "tumour": "tumor",
    "tumours": "tumors",
    "oedema": "edema",
    "haemorrhage": "hemorrhage",
    "grey": "gray",
    "oesophagus": "esophagus",
    "anaemia": "anemia",
    "ischaemic": "ischemic",
    "ischaemia": "ischemia",
    "haematoma": "hematoma",
    "xray": "x-ray",
}


@lru_cache(maxsize=8192)
def stem(word: str) -> str:
    lower = word.lower()
    lower = _SPELLING.get(lower, lower)
    return _STEMMER.stemWord(lower)


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int

    @property
    def lower(self) -> str:
        return self.text.lower()

    @property
    def stem(self) -> str:
        return stem(self.text)


# Letters (any script) with inner apostrophes ("doesn't"); digits on their own ("12").
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+(?:\.\d+)?")


def tokens(text: str, start: int = 0, end: int | None = None) -> list[Token]:
    end = len(text) if end is None else end
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text, start, end)]


# ---------------------------------------------------------------- answer words
# Lower-cased. Other languages: models answer in the question's language or their own.
YES_WORDS = frozenset(
    {
        "yes",
        "yeah",
        "yep",
        "yup",
        "affirmative",
        "true",
        "correct",
        "sí",
        "si",
        "sì",
        "ja",
        "oui",
        "sim",
        "da",
        "да",
        "tak",
        "evet",
        "ya",
        "iya",
        "はい",
        "예",
        "네",
    }
)
NO_WORDS = frozenset(
    {
        "no",
        "nope",
        "false",
        "nein",
        "non",
        "não",
        "nao",
        "нет",
        "nie",
        "hayır",
        "hayir",
        "tidak",
        "いいえ",
        "아니요",
        "아니오",
        "아니",
    }
)
# Scripts without spaces: the answer starts with these characters.
CJK_YES = ("是的", "是", "对", "有", "對")
CJK_NO = ("不是", "没有", "沒有", "否", "不", "无", "無")

# ---------------------------------------------------------------- negation (NegEx-style)
NEGATORS = frozenset(
    {
        "no",
        "not",
        "without",
        "absence",
        "absent",
        "free",
        "lack",
        "lacks",
        "lacking",
        "neither",
        "nor",
        "never",
        "none",
        "non",
        "negative",
        "cannot",
        "can't",
        "don't",
        "doesn't",
        "didn't",
        "isn't",
        "aren't",
        "wasn't",
        "weren't",
        "haven't",
        "hasn't",
        "hadn't",
        "won't",
        "wouldn't",
        "nothing",
        "excluded",
        "exclude",
        "excludes",
        "denies",
        "unlikely",
        "nil",
    }
)
# "no doubt", "not only": the negator does not negate what follows.
PSEUDO_NEGATION = re.compile(
    r"\b(?:no\s+doubt|not\s+only|no\s+matter|not\s+just|no\s+question|without\s+doubt|not\s+to\s+mention)\b", re.I
)
# After a finding: "effusion is not seen", "pneumothorax absent", "fracture ruled out".
POST_NEGATION = re.compile(
    r"[\s,:\-\u2013\u2014]*(?:(?:is|are|was|were|appears?|seems?|looks?|remains?)\s+(?:to\s+be\s+)?)?"
    r"(?:not\s+(?:\w+\s+)?(?:seen|visible|visualized|present|evident|detected|identified|observed|noted|"
    r"appreciated|apparent|shown|demonstrated|found|suggested)|absent|excluded|ruled\s+out|negative)\b",
    re.I,
)
# Words that end a negation's reach (NegEx's terminators) besides sentence and clause punctuation.
SCOPE_BREAKERS = frozenset(
    {
        "but",
        "however",
        "although",
        "though",
        "whereas",
        "except",
        "which",
        "while",
        "yet",
        "aside",
        "apart",
        "still",
        "rather",
        "instead",
    }
)

# ---------------------------------------------------------------- tentative findings
TENTATIVE = frozenset(
    {
        "may",
        "might",
        "could",
        "possible",
        "possibly",
        "perhaps",
        "potential",
        "potentially",
        "suggest",
        "suggests",
        "suggestive",
        "suspicious",
        "suspected",
        "concerning",
        "likely",
        "probable",
        "probably",
        "questionable",
        "consistent",
        "compatible",
        "appear",
        "appears",
        "seem",
        "seems",
        "some",
        "subtle",
        "mild",
        "slight",
        "slightly",
        "minimal",
        "can",
        "would",
        "typically",
        "usually",
    }
)

# ---------------------------------------------------------------- findings that make an image abnormal
# Stems (see stem()): a stated one answers "Is this image normal?" with no, "...abnormal?" with yes.
ABNORMAL_STEMS = frozenset(
    stem(w)
    for w in (
        "abnormal abnormality pathology pathological lesion mass tumor tumorous neoplasm neoplastic "
        "glioma glioblastoma meningioma metastasis metastatic malignant malignancy cancer cancerous "
        "carcinoma melanoma fracture effusion opacity consolidation pneumonia infiltrate edema hemorrhage "
        "bleed infarct infarction nodule cyst enlarged enlargement cardiomegaly pneumothorax atelectasis "
        "collapse hernia obstruction dilated dilation disease diseased infection inflammation irregular "
        "atypical atypia dysplasia invasive carcinoma hematoma aneurysm stenosis thickening calcification "
        "degeneration atrophy displacement displaced deviation shift herniation"
    ).split()
)
NORMAL_STEMS = frozenset(stem(w) for w in "normal unremarkable healthy benign clear".split())
# Antonyms: a stated antonym answers the question's term negatively ("benign" to "malignant?").
ANTONYMS = {
    stem("malignant"): frozenset({stem("benign")}),
    stem("benign"): frozenset({stem("malignant"), stem("malignancy")}),
    stem("abnormal"): NORMAL_STEMS - {stem("clear")},
    stem("normal"): frozenset({stem("abnormal")}),
    stem("present"): frozenset({stem("absent")}),
    stem("absent"): frozenset({stem("present")}),
    stem("positive"): frozenset({stem("negative")}),
    stem("negative"): frozenset({stem("positive")}),
    stem("increased"): frozenset({stem("decreased")}),
    stem("decreased"): frozenset({stem("increased")}),
    stem("left"): frozenset({stem("right")}),
    stem("upper"): frozenset({stem("lower")}),
    stem("lower"): frozenset({stem("upper")}),
    stem("anterior"): frozenset({stem("posterior")}),
    stem("posterior"): frozenset({stem("anterior")}),
    stem("superior"): frozenset({stem("inferior")}),
    stem("inferior"): frozenset({stem("superior")}),
    stem("right"): frozenset({stem("left")}),
}
# Imaging modalities: a stated other modality answers "Is this a CT?" with no. "x-ray" is one
# token pair ("x", "ray") to the tokenizer, so its stems are "x" and "ray".
MODALITY_STEMS = frozenset(
    stem(w) for w in "ct mri ray radiograph ultrasound sonogram pet mammogram angiogram fluoroscopy endoscopy".split()
)
# Where a finding is: a statement that puts it on the other side ("in the right lung, not the
# left") does not answer a question about this side.
LOCATION_STEMS = frozenset(stem(w) for w in "left right upper lower anterior posterior superior inferior".split())
# Words that name a condition the study asks about, by the question's word (stems both sides).
SYNONYMS = {
    stem(key): frozenset(stem(w) for w in words.split())
    for key, words in {
        "tumor": "tumors tumorous mass masses neoplasm neoplasms neoplastic glioma glioblastoma meningioma "
        "metastasis metastases metastatic",
        "pneumonia": "consolidation consolidations infiltrate infiltrates",
        "cancer": "cancerous malignant malignancy melanoma carcinoma carcinomas",
        "carcinoma": "carcinomas idc malignant malignancy cancer cancerous",
        "malignant": "malignancy cancer cancerous melanoma carcinoma",
        "cardiomegaly": "enlarged enlargement",
        "enlarged": "enlargement cardiomegaly hepatomegaly splenomegaly",
        "fracture": "fractures fractured break",
    }.items()
}
# Words that say nothing about what the question targets.
GENERIC_STEMS = frozenset(
    stem(w)
    for w in (
        "image images picture photo photograph scan scans film radiograph radiography x-ray xray ray "
        "study slide patch view sample figure specimen shown visible seen present noted identified evident "
        "appreciated observed detected demonstrated depicted displayed evidence sign signs presence finding "
        "findings feature features indication indications any some there this that these those it its "
        "the a an of in on at to with within for from by patient patients you i we see show shows showing "
        "contain contains containing demonstrate demonstrates depict depicts display displays reveal reveals "
        "is are was were be been being do does did can could would will should may might has have had "
        "here case region area type kind consider please answer question one word yes no process change "
        "changes appearance pattern likely and associated related which what following statement statements"
    ).split()
)
