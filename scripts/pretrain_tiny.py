#!/usr/bin/env python
"""Pretrain the embedded tiny DeepSeek-OCR-2 (``deepsynth/tiny-ocr2``) to read rendered French text.

The embedded default model is random-init: it cannot read, so fine-tuning it on a handful of
documents shows the mechanics but never a real OCR. This script gives it a base that reads short
French lines, on a 2-core CPU in about an hour, and writes the weights that ship with the package
(``src/deepsynth/models/assets/tiny-ocr2/``, picked up first by ``deepsynth.models.tiny.load_embedded``).

Data: French sentences generated here from word lists and templates with a seeded RNG (no copied
corpus), rendered with DeepSynth's own renderer (``render_document`` at its default 640 px width)
and turned into inputs by ``build_example(processor, page, text, instruction="Free OCR.")`` — the
exact pipeline the trainer feeds, including the processor's resize to 384 px. A text is held out
when a hash of it says so (1 in 10); training never draws a held-out text, so the evaluation reads
sentences the model has never seen.

Curriculum (145 vision tokens, each one a 32×32 px cell of the 384 px page): short texts in a very
large font first, then longer lines in smaller fonts, down to the renderer's default 20 px
(12 px once resized) at the end. Full-parameter training (vision included), AdamW, linear warm-up
then cosine decay, one CPU thread.

Training-only aids (none of them is in the shipped model, which is the plain architecture):

* page reconstruction: vision query i predicts the ink of cell i (a dense signal from step one);
* glyph head: vision query i predicts which characters lie in cell i (from the renderer's layout);
* attention guidance: one head of decoder layer 1 looks at the cells of the token just read, one
  head of layer 2 at the cells of the token to write next;
* spelled embeddings: each token's input/output embedding is its own vector plus the sum of learned
  (character, position) vectors, so rare BPE tokens share what frequent ones learned about letters;
  folded into the plain weights before saving.

Measured effect of each (same seed, same data order): docs/pretraining.md.

Usage::

    nice -n 19 python scripts/pretrain_tiny.py --minutes 60 --seed 0 --out src/deepsynth/models/assets/tiny-ocr2
    python scripts/pretrain_tiny.py --steps 2000 --seed 0 --out DIR   # fixed step count: bit-reproducible
    python scripts/pretrain_tiny.py --resume ...                      # continue from WORK_DIR/last.pt
    python scripts/pretrain_tiny.py --eval-only DIR                   # CER of a checkpoint (and of random init)

With ``--minutes`` the schedule (learning rate, curriculum) follows the training time, so the run
ends on time whatever the machine's load, and the number of steps it reached is logged; pass that
number as ``--steps`` for a run that is bit-reproducible on any machine: same init and same
per-step data seeds, but the schedule then follows steps rather than wall time, so it is a close
replay of a ``--minutes`` run, not an exact one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "deepsynth" / "models" / "assets" / "tiny-ocr2"
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "deepsynth-pretrain-tiny"

# ----------------------------------------------------------------------------------------------
# French text generator (word lists and templates written for this script).
# ----------------------------------------------------------------------------------------------

# (noun, gender); plurals follow the regular rules in _plural.
NOUNS = [(w, "m") for w in (
    "bureau jardin marché village château chemin voyage repas fromage gâteau café thé vin pain "
    "livre journal roman musée théâtre cinéma concert spectacle tableau dessin piano violon "
    "vélo bateau train avion camion tracteur moulin pont port phare quai hôpital hôtel collège "
    "lycée stade parc bois champ verger potager troupeau cheval chien chat oiseau poisson lapin "
    "renard loup ours élève étudiant médecin boulanger facteur pompier policier maire voisin "
    "cousin oncle frère grand-père artisan ingénieur architecte avocat juge témoin client "
    "rapport contrat courrier colis dossier projet budget salaire impôt loyer billet ticket "
    "problème résultat chiffre calendrier rendez-vous déjeuner dîner goûter matin soir été hiver "
    "automne printemps orage nuage soleil vent brouillard ciel fleuve ruisseau lac étang rocher "
    "sommet sentier carrefour trottoir escalier ascenseur grenier sous-sol salon couloir "
    "fauteuil canapé tapis miroir rideau placard tiroir couteau verre bol panier sac manteau "
    "chapeau parapluie téléphone ordinateur écran clavier logiciel réseau message"
).split()] + [(w, "f") for w in (
    "maison école église mairie gare poste banque boulangerie pharmacie librairie boutique "
    "épicerie cuisine chambre fenêtre porte table chaise lampe armoire étagère bibliothèque "
    "voiture moto route rue avenue place plage forêt montagne colline vallée rivière île mer "
    "campagne ferme prairie vigne récolte saison année semaine journée soirée nuit heure "
    "minute lettre facture réunion décision réponse question demande note carte photo affiche "
    "chanson musique peinture histoire leçon dictée rédaction équipe famille mère sœur tante "
    "cousine voisine amie directrice infirmière boulangère vendeuse chanteuse lune étoile "
    "pluie neige tempête fleur rose tulipe pomme poire cerise fraise tarte soupe salade "
    "baguette confiture tasse assiette fourchette cuillère bouteille valise clé montre robe "
    "chemise veste écharpe entreprise société association commission région ville capitale "
    "frontière université bourse retraite santé économie énergie industrie agriculture culture"
).split()]

# (masculine, feminine) adjectives placed after the noun.
ADJECTIVES = [
    ("petit", "petite"), ("grand", "grande"), ("nouveau", "nouvelle"), ("vieux", "vieille"),
    ("beau", "belle"), ("joli", "jolie"), ("rouge", "rouge"), ("bleu", "bleue"), ("vert", "verte"),
    ("blanc", "blanche"), ("noir", "noire"), ("gris", "grise"), ("jaune", "jaune"),
    ("doré", "dorée"), ("léger", "légère"), ("lourd", "lourde"), ("chaud", "chaude"),
    ("froid", "froide"), ("frais", "fraîche"), ("sec", "sèche"), ("mûr", "mûre"),
    ("célèbre", "célèbre"), ("étrange", "étrange"), ("ancien", "ancienne"), ("moderne", "moderne"),
    ("français", "française"), ("européen", "européenne"), ("breton", "bretonne"),
    ("normand", "normande"), ("provençal", "provençale"), ("municipal", "municipale"),
    ("régional", "régionale"), ("national", "nationale"), ("public", "publique"),
    ("privé", "privée"), ("important", "importante"), ("précis", "précise"),
    ("complet", "complète"), ("discret", "discrète"), ("inquiet", "inquiète"),
    ("heureux", "heureuse"), ("généreux", "généreuse"), ("sérieux", "sérieuse"),
    ("délicieux", "délicieuse"), ("sportif", "sportive"), ("neuf", "neuve"), ("rapide", "rapide"),
    ("calme", "calme"), ("fragile", "fragile"), ("élégant", "élégante"), ("épais", "épaisse"),
    ("étroit", "étroite"), ("fermé", "fermée"), ("ouvert", "ouverte"), ("éclairé", "éclairée"),
    ("oublié", "oubliée"), ("préféré", "préférée"), ("réservé", "réservée"), ("abîmé", "abîmée"),
]

# (3rd person singular, 3rd person plural, past participle) of transitive verbs.
VERBS = [
    ("regarde", "regardent", "regardé"), ("cherche", "cherchent", "cherché"),
    ("trouve", "trouvent", "trouvé"), ("prépare", "préparent", "préparé"),
    ("répare", "réparent", "réparé"), ("achète", "achètent", "acheté"),
    ("vend", "vendent", "vendu"), ("prend", "prennent", "pris"), ("ouvre", "ouvrent", "ouvert"),
    ("ferme", "ferment", "fermé"), ("lit", "lisent", "lu"), ("écrit", "écrivent", "écrit"),
    ("envoie", "envoient", "envoyé"), ("reçoit", "reçoivent", "reçu"),
    ("dessine", "dessinent", "dessiné"), ("peint", "peignent", "peint"),
    ("range", "rangent", "rangé"), ("nettoie", "nettoient", "nettoyé"),
    ("visite", "visitent", "visité"), ("choisit", "choisissent", "choisi"),
    ("finit", "finissent", "fini"), ("vérifie", "vérifient", "vérifié"),
    ("décore", "décorent", "décoré"), ("apporte", "apportent", "apporté"),
    ("oublie", "oublient", "oublié"), ("présente", "présentent", "présenté"),
    ("étudie", "étudient", "étudié"), ("signe", "signent", "signé"),
    ("déplace", "déplacent", "déplacé"), ("protège", "protègent", "protégé"),
    ("mange", "mangent", "mangé"), ("goûte", "goûtent", "goûté"), ("voit", "voient", "vu"),
    ("construit", "construisent", "construit"), ("traverse", "traversent", "traversé"),
    ("photographie", "photographient", "photographié"), ("reçoit", "reçoivent", "reçu"),
]

# (3rd person singular, 3rd person plural) of intransitive verbs.
INTRANSITIVE = [
    ("dort", "dorment"), ("chante", "chantent"), ("danse", "dansent"), ("travaille", "travaillent"),
    ("arrive", "arrivent"), ("part", "partent"), ("attend", "attendent"), ("rit", "rient"),
    ("court", "courent"), ("nage", "nagent"), ("rêve", "rêvent"), ("hésite", "hésitent"),
    ("déjeune", "déjeunent"), ("marche", "marchent"), ("répond", "répondent"), ("sourit", "sourient"),
    ("réfléchit", "réfléchissent"), ("voyage", "voyagent"), ("joue", "jouent"), ("lit", "lisent"),
]

NAMES = (
    "Jean", "Marie", "Paul", "Léa", "Hugo", "Chloé", "Louis", "Inès", "Lucas", "Jade", "Théo",
    "Zoé", "Noé", "Éloïse", "Hélène", "Jérôme", "Cécile", "Noël", "Raphaël", "Anaïs", "Loïc",
    "Maëlle", "Benoît", "Gaëlle", "Thérèse", "André", "Élise", "Joël", "Françoise", "Agnès",
    "Clément", "Mathéo", "Océane", "Bérénice", "Timothée", "Solène", "Gérard", "Renée", "Mélanie",
    "Amélie", "Aurélien", "Léon", "Inès", "Valérie", "Stéphane", "Sébastien", "Frédéric", "Josée",
)
SURNAMES = (
    "Martin", "Bernard", "Dubois", "Durand", "Lefèvre", "Moreau", "Girard", "Fontaine", "Roux",
    "Chevalier", "Mercier", "Gauthier", "Lemaître", "Bérard", "Ferré", "Lebœuf", "Delacroix",
)
CITIES = (
    "Paris", "Lyon", "Marseille", "Toulouse", "Nantes", "Lille", "Rennes", "Brest", "Nice", "Caen",
    "Reims", "Dijon", "Metz", "Nancy", "Tours", "Angers", "Limoges", "Pau", "Bayonne", "Arles",
    "Nîmes", "Béziers", "Sète", "Fréjus", "Épinal", "Évian", "Besançon", "Orléans", "Chambéry",
    "Québec", "Montréal", "Genève", "Liège", "Bruxelles", "Namur", "Dakar", "Tunis", "Angoulême",
)
MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
    "octobre", "novembre", "décembre",
)
DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
TIMES = (
    "Ce matin", "Hier soir", "Demain", "Aujourd'hui", "Après le dîner", "Avant l'été",
    "En hiver", "Au printemps", "Chaque jour", "Parfois", "Souvent", "Enfin", "Ensuite",
    "Pendant la nuit", "À midi", "Dès l'aube", "Cet après-midi", "Le week-end", "Plus tard",
)
PLACES = (
    "près de la gare", "dans le jardin", "au marché", "à la plage", "sur la place", "devant l'école",
    "derrière la maison", "au bord du lac", "dans la cuisine", "au fond du couloir", "à la mairie",
    "sous le pont", "au sommet de la colline", "dans la forêt", "à côté du musée", "en ville",
    "à la campagne", "au bureau", "chez le boulanger", "dans la vallée", "sur le quai", "au grenier",
)
ADVERBS = (
    "lentement", "rapidement", "doucement", "souvent", "toujours", "déjà", "encore", "bientôt",
    "volontiers", "sérieusement", "gaiement", "prudemment", "très tôt", "trop tard", "à nouveau",
)
INTERJECTIONS = ("Bonjour", "Merci", "Bravo", "Attention", "Hélas", "Voilà", "Salut", "Au revoir")

_VOWELS = "aeiouyàâéèêëîïôûùœh"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z")):
        return noun
    if noun.endswith(("eau", "eu")):
        return noun + "x"
    if noun.endswith("al"):
        return noun[:-2] + "aux"
    return noun + "s"


def _adjective(pair: tuple[str, str], gender: str, plural: bool) -> str:
    form = pair[1] if gender == "f" else pair[0]
    if plural and not form.endswith(("s", "x")):
        form = form[:-2] + "aux" if form.endswith("al") else form + "s"
    return form


def _noun_phrase(rng: random.Random, *, plural: bool | None = None, adjective: float = 0.5) -> str:
    noun, gender = rng.choice(NOUNS)
    if plural is None:
        plural = rng.random() < 0.3
    elided = noun[0].lower() in _VOWELS
    if plural:
        det = rng.choice(("les", "des", "ces", "mes", "nos", "leurs", "trois", "deux", "plusieurs"))
        words = [det, _plural(noun)]
    else:
        kind = rng.choice(("def", "def", "indef", "dem", "poss"))
        if kind == "def":
            det = "l'" if elided else ("la" if gender == "f" else "le")
        elif kind == "indef":
            det = "une" if gender == "f" else "un"
        elif kind == "dem":
            det = "cette" if gender == "f" else ("cet" if elided else "ce")
        else:
            det = rng.choice(("mon", "ton", "son", "notre", "votre")) if (gender == "m" or elided) else rng.choice(
                ("ma", "ta", "sa", "notre", "votre"))
        words = [det + noun] if det.endswith("'") else [det, noun]
    if rng.random() < adjective:
        words.append(_adjective(rng.choice(ADJECTIVES), gender, plural))
    return " ".join(words)


def _subject(rng: random.Random) -> tuple[str, bool]:
    """(subject, plural)."""
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(NAMES), False
    if roll < 0.4:
        return f"{rng.choice(NAMES)} et {rng.choice(NAMES)}", True
    if roll < 0.5:
        pronoun = rng.choice(("il", "elle", "on", "ils", "elles"))
        return pronoun, pronoun in ("ils", "elles")
    plural = rng.random() < 0.3
    return _noun_phrase(rng, plural=plural, adjective=0.3), plural


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return str(rng.randint(2, 99))
    if roll < 0.6:
        return f"{rng.randint(1, 999)},{rng.randint(0, 99):02d} €"
    if roll < 0.8:
        return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1950, 2030)}"
    return f"{rng.randint(0, 23)} h {rng.randint(0, 5)}{rng.randint(0, 9)}"


def sentence(rng: random.Random) -> str:
    """One generated French sentence (5 to ~15 words)."""
    subject, plural = _subject(rng)
    verb = rng.choice(VERBS)
    intrans = rng.choice(INTRANSITIVE)
    v, vi = (verb[1], intrans[1]) if plural else (verb[0], intrans[0])
    template = rng.randrange(10)
    if template == 0:
        text = f"{subject} {v} {_noun_phrase(rng)}."
    elif template == 1:
        text = f"{subject} {v} {_noun_phrase(rng)} {rng.choice(PLACES)}."
    elif template == 2:
        text = f"{rng.choice(TIMES)}, {subject} {v} {_noun_phrase(rng)}."
    elif template == 3:
        aux = "ont" if plural else "a"
        text = (f"{subject} {aux} {verb[2]} {_noun_phrase(rng)} le {rng.randint(1, 28)} "
                f"{rng.choice(MONTHS)} {rng.randint(1950, 2030)}.")
    elif template == 4:
        text = f"{subject} {vi} {rng.choice(PLACES)}."
    elif template == 5:
        text = f"{subject} {vi} {rng.choice(ADVERBS)} à {rng.choice(CITIES)}."
    elif template == 6:
        obj = _noun_phrase(rng, plural=False)
        text = f"{obj} coûte {rng.randint(1, 999)},{rng.randint(0, 99):02d} €."
    elif template == 7:
        text = f"Le {rng.choice(DAYS)} {rng.randint(1, 28)} {rng.choice(MONTHS)}, {subject} {vi} à {rng.randint(7, 22)} h."
    elif template == 8:
        text = f"Où est {_noun_phrase(rng, plural=False)} de {rng.choice(NAMES)} ?"
    else:
        text = f"Il y a {rng.randint(2, 60)} {_plural(rng.choice(NOUNS)[0])} {rng.choice(PLACES)}."
    return _capitalize(text)


def _flat_word(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(NOUNS)[0]
    if roll < 0.5:
        return _adjective(rng.choice(ADJECTIVES), rng.choice("mf"), rng.random() < 0.2)
    if roll < 0.62:
        return rng.choice(rng.choice(VERBS + INTRANSITIVE)[:2])
    if roll < 0.74:
        return rng.choice(NAMES + SURNAMES)
    if roll < 0.82:
        return rng.choice(CITIES)
    if roll < 0.9:
        return _number(rng)
    return rng.choice(MONTHS + DAYS + ADVERBS + INTERJECTIONS)


def short_text(rng: random.Random) -> str:
    """1 to 4 words: a random word sequence, a noun phrase, a name and a verb, a date, a price…"""
    roll = rng.random()
    if roll < 0.45:
        text = " ".join(_flat_word(rng) for _ in range(rng.randint(1, 3)))
        return _capitalize(text) if rng.random() < 0.5 else text
    if roll < 0.65:
        return _capitalize(_noun_phrase(rng, plural=None, adjective=0.6))
    if roll < 0.8:
        subject = rng.choice(NAMES)
        return f"{subject} {rng.choice(INTRANSITIVE)[0]}" + ("." if rng.random() < 0.5 else "")
    if roll < 0.9:
        return f"{rng.choice(INTERJECTIONS)} {rng.choice(NAMES)} !"
    return _number(rng)


def random_words(rng: random.Random) -> str:
    """3–6 unrelated words: no sentence prior to lean on, only the page."""
    return _capitalize(" ".join(_flat_word(rng) for _ in range(rng.randint(3, 6))))


def is_heldout(text: str) -> bool:
    """1 text in 10 is held out, by a hash of the text itself (training never draws these)."""
    return hashlib.sha1(text.encode("utf-8")).digest()[0] % 10 == 0


def draw(generator, rng: random.Random, split: str) -> str:
    """A text from ``generator`` that belongs to ``split`` ("train" or "heldout")."""
    want = split == "heldout"
    while True:
        text = generator(rng)
        if is_heldout(text) == want:
            return text


# Longer texts are built from "atoms" (a short text, a sentence, a run of random words) of one
# split only, so no held-out sentence or short line ever appears inside a training page.


def line_text(rng: random.Random, split: str = "train") -> str:
    """About one line: random words, a short sentence, or two short texts."""
    if rng.random() < 0.4:
        return draw(random_words, rng, split)
    text = draw(sentence, rng, split)
    return text if len(text) <= 48 else f"{draw(short_text, rng, split)} {draw(short_text, rng, split)}"


def paragraph(rng: random.Random, split: str = "train", sentences: tuple[int, int] = (1, 3)) -> str:
    return " ".join(draw(sentence, rng, split) for _ in range(rng.randint(*sentences)))


# ----------------------------------------------------------------------------------------------
# Pages and curriculum
# ----------------------------------------------------------------------------------------------

# Kinds of sample: (text generator(rng, split), font sizes at the renderer's default 640 px width).
# The processor resizes pages to 384 px, so an effective size is 0.6× the font size.
KINDS = {
    "short": (lambda rng, split: draw(short_text, rng, split), (44, 60)),  # 1–4 words, 26–36 px resized
    "line": (line_text, (34, 48)),                                       # 1–2 lines, 20–29 px
    "sentence": (lambda rng, split: draw(sentence, rng, split), (26, 36)),  # 16–22 px
    "small": (lambda rng, split: paragraph(rng, split, (1, 2)), (20, 26)),  # the default 20 px (12 px)
}


def stage_mix(progress: float) -> dict[str, float]:
    """Share of each kind of sample at ``progress`` (0 → 1) of the run.

    (Packing several short texts per page — more characters for the same vision cost — was tried
    and read worse after 20 minutes: the decoder leaned on the language prior; see the docs.)
    """
    if progress < 0.25:
        return {"short": 1.0}
    if progress < 0.5:
        return {"short": 0.4, "line": 0.6}
    if progress < 0.75:
        return {"short": 0.2, "line": 0.4, "sentence": 0.4}
    return {"short": 0.15, "line": 0.25, "sentence": 0.35, "small": 0.25}


def render_sample(rng: random.Random, kind: str, split: str = "train", font_size: int | None = None):
    """(page image, text, font size) of one sample, rendered at the renderer's default width."""
    from deepsynth.data import render_document

    generator, (low, high) = KINDS[kind]
    text = generator(rng, split)
    size = font_size if font_size is not None else rng.randint(low, high)
    return render_document(text, font_size=size), text, size


# Characters the glyph head classifies (every character the generator can write, both cases).
def _charset() -> str:
    words = [w for w, _ in NOUNS] + [w for pair in ADJECTIVES for w in pair] + [w for t in VERBS for w in t]
    words += [w for t in INTRANSITIVE for w in t] + list(NAMES + SURNAMES + CITIES + MONTHS + DAYS)
    words += list(TIMES + PLACES + ADVERBS + INTERJECTIONS) + ["0123456789,.'!?€-"]
    chars = {c for word in words for c in word} | {c.upper() for word in words for c in word}
    return "".join(sorted(c for c in chars if not c.isspace() and len(c) == 1))


CHARSET = _charset()
_CHAR_INDEX = {c: i for i, c in enumerate(CHARSET)}


def char_cells(text: str, font_size: int) -> list[int]:
    """Cell (0–143, row-major on the 12×12 grid of the resized page) of each character of ``text``;
    −1 for spaces and for characters cut off at the bottom of the page.

    Recomputes ``render_document``'s layout at its default width (same wrap, line height and
    cut at the bottom), places each character by the font's advance widths, and scales to 384 px.
    """
    from deepsynth.data.render import _LINE_SPACING, _font, wrap_text
    from deepsynth.models import tiny

    width, margin = 640, 24  # render_document's defaults
    grid = tiny.IMAGE_SIZE // (tiny.SAM_PATCH_SIZE * tiny.DOWNSAMPLE_RATIO)
    cell = tiny.IMAGE_SIZE / grid
    scale = tiny.IMAGE_SIZE / width
    font = _font(font_size)
    ascent, descent = font.getmetrics()
    cells = [-1] * len(text)
    cursor = 0  # index in ``text`` of the current line's first character
    y = margin
    for line in wrap_text(text, width=width, font_size=font_size, margin=margin):
        while cursor < len(text) and text[cursor] == " " and not line.startswith(" "):
            cursor += 1
        if text[cursor:cursor + len(line)] != line:  # the wrap changed the text: stop placing
            break
        if y + ascent + descent > width - margin:
            break
        row = min(grid - 1, int((y + 0.65 * ascent) * scale // cell))
        left = 0.0
        for k, char in enumerate(line):
            right = font.getlength(line[: k + 1])
            if not char.isspace():
                col = min(grid - 1, int((margin + (left + right) / 2) * scale // cell))
                cells[cursor + k] = row * grid + col
            left = right
        cursor += len(line)
        y += round(font_size * _LINE_SPACING)
    return cells


def glyph_cells(text: str, font_size: int):
    """Which characters lie in each of the 144 32×32 px cells of the resized page: ``[144, len(CHARSET)]``."""
    import torch

    from deepsynth.models import tiny

    grid = tiny.IMAGE_SIZE // (tiny.SAM_PATCH_SIZE * tiny.DOWNSAMPLE_RATIO)
    labels = torch.zeros(grid * grid, len(CHARSET))
    for char, cell in zip(text, char_cells(text, font_size)):
        index = _CHAR_INDEX.get(char)
        if cell >= 0 and index is not None:
            labels[cell, index] = 1.0
    return labels


def token_cells(tokenizer, text: str, font_size: int) -> list[list[int]]:
    """For each token of ``tokenizer(text)`` (no special tokens), the cells its characters lie in."""
    cells = char_cells(text, font_size)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [sorted({cells[i] for i in range(start, end) if cells[i] >= 0}) for start, end in offsets]


SPELLING_POSITIONS = 8  # characters of a token the spelling features see (later ones share the last slot)


def spelling_matrix(tokenizer, vocab_size: int):
    """``[vocab, positions × (chars + 1)]``: 1 where token t has character c at position i
    (space included, so a word-initial token differs from a word-internal one)."""
    import torch

    alphabet = " " + CHARSET
    index = {c: i for i, c in enumerate(alphabet)}
    spelling = torch.zeros(vocab_size, SPELLING_POSITIONS * len(alphabet))
    for token in range(vocab_size):
        if token in tokenizer.all_special_ids:
            continue
        for position, char in enumerate(tokenizer.decode([token])):
            if char in index:
                spelling[token, min(position, SPELLING_POSITIONS - 1) * len(alphabet) + index[char]] = 1.0
    return spelling


class SpelledWeight(__import__("torch").nn.Module):
    """Parametrization of a token-embedding matrix: ``W + spelling @ features``.

    Pretraining only. A BPE token's row becomes its free vector plus the sum of learned
    (character, position) vectors, so what the model learns about a letter on the page serves every
    token that contains it — rare tokens included. Without it each of the 4,096 tokens had to be
    learned from its own few occurrences, and the decoder fell back on frequent tokens. The sum is
    folded into the plain weight before saving: the shipped model is the unmodified architecture.
    """

    def __init__(self, spelling, hidden_size: int):
        import torch

        super().__init__()
        self.register_buffer("spelling", spelling, persistent=False)
        self.features = torch.nn.Parameter(torch.zeros(spelling.shape[1], hidden_size))

    def forward(self, weight):
        return weight + self.spelling @ self.features


def spell_embeddings(model, tokenizer) -> list:
    """Parametrize the input embeddings and the LM head with :class:`SpelledWeight`; returns the new parameters."""
    import torch.nn.utils.parametrize as parametrize

    spelling = spelling_matrix(tokenizer, model.config.text_config.vocab_size)
    hidden = model.config.text_config.hidden_size
    parameters = []
    for module in (model.get_input_embeddings(), model.lm_head):
        parametrization = SpelledWeight(spelling, hidden)
        parametrize.register_parametrization(module, "weight", parametrization)
        parameters.append(parametrization.features)
    return parameters


def plain_copy(model):
    """A plain model with the spelling folded into its weights (what gets saved and shipped).

    Built afresh and loaded from a state dict: ``remove_parametrizations`` on a deep copy would
    also strip the property from the parametrized class the original shares.
    """
    import torch

    from deepsynth.models import tiny

    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations.weight." not in key:
            state[key] = value
        elif key.endswith(".parametrizations.weight.original"):
            owner = model.get_submodule(key[: -len(".parametrizations.weight.original")])
            with torch.no_grad():
                state[key.replace(".parametrizations.weight.original", ".weight")] = owner.weight.detach().clone()
    plain, _ = tiny.build_embedded_model()
    plain.load_state_dict(state, strict=True)
    plain.train(model.training)
    return plain


def alignment_targets(batch, token_cell_lists: list[list[list[int]]], image_token_id: int):
    """``(rows, queries, cell_positions)``: for each target token whose characters lie in known cells,
    the sequence position that predicts it (the one before it) and the positions of its cells' vision
    tokens. The first 144 image-token positions of a sample are the cells, row-major."""
    rows, queries, positions = [], [], []
    for b, cell_lists in enumerate(token_cell_lists):
        ids = batch["input_ids"][b]
        image_positions = (ids == image_token_id).nonzero().flatten().tolist()
        labelled = (batch["labels"][b] != -100).nonzero().flatten().tolist()
        for k, cell_list in enumerate(cell_lists):
            if k >= len(labelled) or not cell_list:
                continue
            rows.append(b)
            queries.append(labelled[k] - 1)
            positions.append([image_positions[c] for c in cell_list])
    return rows, queries, positions


# Held-out evaluation sets: name → (text generator(rng, split), font size, description);
# font size None = render_document's defaults (what a text-only document gets in the trainer).
EVAL_SETS = {
    "short_large": (lambda rng, split: draw(short_text, rng, split), 48, "1–4 words, font 48 (29 px resized)"),
    "sentence_medium": (lambda rng, split: draw(sentence, rng, split), 32, "one sentence, font 32 (19 px resized)"),
    "default_page": (lambda rng, split: paragraph(rng, split, (1, 3)), None,
                     "1–3 sentences, renderer defaults: font 20 (12 px resized)"),
}


def eval_samples(name: str, count: int, seed: int = 12345) -> list[tuple[object, str]]:
    """``count`` held-out (page, text) pairs of an evaluation set; fixed by ``seed``."""
    from deepsynth.data import render_document

    generator, font_size, _ = EVAL_SETS[name]
    rng = random.Random(f"eval-{name}-{seed}")
    samples = []
    seen: set[str] = set()
    while len(samples) < count:
        text = generator(rng, "heldout")
        if text in seen:
            continue
        seen.add(text)
        page = render_document(text) if font_size is None else render_document(text, font_size=font_size)
        samples.append((page, text))
    return samples


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def read_pages(model, processor, samples, *, no_repeat_ngram_size: int = 6) -> dict[str, object]:
    """Greedy transcriptions of ``samples`` and their metrics (CER…) against the texts."""
    import torch

    from deepsynth.data.collate import OCR_INSTRUCTION
    from deepsynth.evaluation.compare import generate_text
    from deepsynth.evaluation.metrics import text_metrics

    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    predictions, references = [], []
    with torch.no_grad():
        for page, text in samples:
            budget = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 8
            predictions.append(generate_text(model, processor, page, instruction=OCR_INSTRUCTION,
                                              max_new_tokens=budget, no_repeat_ngram_size=no_repeat_ngram_size))
            references.append(text)
    model.train(was_training)
    metrics = text_metrics(predictions, references)
    metrics["exact"] = sum(p == r for p, r in zip(predictions, references)) / len(references)
    return {"metrics": metrics, "examples": list(zip(references[:5], predictions[:5]))}


def image_reliance(model, processor, count: int = 16) -> tuple[float, float]:
    """Teacher-forced loss on held-out short lines with their own pages, then with the pages rolled
    by one (each text paired with another text's page). Equal losses = the model ignores the image."""
    import torch

    from deepsynth.data.collate import OCR_INSTRUCTION, DataCollator, build_example

    samples = eval_samples("short_large", count)
    batch = DataCollator(processor)(
        [build_example(processor, page, text, instruction=OCR_INSTRUCTION) for page, text in samples])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        real = model(**batch).loss.item()
        batch["pixel_values"] = batch["pixel_values"].roll(1, dims=0)
        shuffled = model(**batch).loss.item()
    model.train(was_training)
    return real, shuffled


def evaluate(model, processor, counts: dict[str, int]) -> dict[str, dict]:
    return {name: read_pages(model, processor, eval_samples(name, count)) for name, count in counts.items()}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _print_eval(tag: str, results: dict[str, dict]) -> None:
    for name, result in results.items():
        m = result["metrics"]
        _log(f"{tag} {name}: CER {m['cer']:.3f}  exact {m['exact']:.2f}  loops {m['loop_rate']:.2f}")
        for reference, prediction in result["examples"][:3]:
            _log(f"    {reference!r} -> {prediction!r}")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _batch(processor, collator, rng: random.Random, progress: float, batch_size: int):
    """(collated batch, glyph targets [B, 144, chars], per-sample token→cells lists, kinds)."""
    import torch

    from deepsynth.data.collate import OCR_INSTRUCTION, build_example

    mix = stage_mix(progress)
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=batch_size)
    examples, glyphs, cells = [], [], []
    for kind in kinds:
        page, text, size = render_sample(rng, kind)
        examples.append(build_example(processor, page, text, instruction=OCR_INSTRUCTION, max_length=512))
        glyphs.append(glyph_cells(text, size))
        cells.append(token_cells(processor.tokenizer, text, size))
    return collator(examples), torch.stack(glyphs), cells, kinds


def alignment_loss(weights, rows, queries, positions):
    """Mean −log of the attention mass a head puts on the target cells (``weights``: [B, T, T])."""
    import torch

    if not rows:
        return weights.sum() * 0.0
    target = torch.zeros(len(rows), weights.shape[-1])
    for i, cell_positions in enumerate(positions):
        target[i, cell_positions] = 1.0
    mass = (weights[torch.tensor(rows), torch.tensor(queries)] * target).sum(-1)
    return -torch.log(mass + 1e-6).mean()


def _lr(step: int, progress: float, base: float, warmup: int, floor: float) -> float:
    warm = min(1.0, (step + 1) / warmup)
    cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base * warm * cosine


def save_checkpoint(model, out: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (nothing else) into ``out``, atomically per file."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:
        model.save_pretrained(staging)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(Path(staging) / name, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)


def check_checkpoint(model, out: Path) -> None:
    """Reload ``out`` and check it is ``model`` exactly, with no missing or unexpected key."""
    import torch
    from transformers import DeepseekOcr2ForConditionalGeneration

    reloaded, info = DeepseekOcr2ForConditionalGeneration.from_pretrained(
        str(out), local_files_only=True, output_loading_info=True)
    bad = {key: value for key, value in info.items() if value}
    if bad:
        raise RuntimeError(f"{out}: loading info not clean: {bad}")
    mine, theirs = model.state_dict(), reloaded.state_dict()
    if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in mine):
        raise RuntimeError(f"{out}: reloaded weights differ from the trained model")


def revive_sam_init(model, seed: int) -> int:
    """Re-initialise the SAM part of the vision tower; returns how many tensors were re-drawn.

    transformers' ``DeepseekOcr2SamVisionConfig`` (like SAM's) defaults to ``initializer_range=1e-10``:
    harmless when real weights are loaded, but a model built from that config has SAM weights of
    ~1e-10, its vision features are ~1e-38 whatever the page, and no gradient reaches them — the
    random-init tiny model is blind and cannot learn to see. Convolutions get a fan-in normal init
    (std 1/sqrt(fan_in), so the un-normalised downsampling convs keep the signal's scale), linear
    layers the N(0, 0.02) init of the rest of the model. Positional tables stay zero (learned).
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(10_000 + seed)
    count = 0
    with torch.no_grad():
        for module in model.model.vision_tower.sam_encoder.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, fan_in ** -0.5, generator=generator)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.02, generator=generator)
            else:
                continue
            count += 1
            if module.bias is not None:
                module.bias.zero_()
    return count


def cell_attention_init(model, strength: float = 5.0, heads: tuple[int, ...] = (0, 1)) -> None:
    """Start the vision encoder's first layer with query ``i`` looking at SAM patch ``i``.

    The encoder reads ``[144 SAM patches, 144 learned queries]`` (positions 0–287, RoPE) and only
    the queries reach the language model. From a random init the queries' attention is uniform,
    their output is the average of a mostly white page, the same for every page, and nothing
    learns to change that (measured: the page-reconstruction loss stalls at the blank-page
    prediction). Patch ``i`` of the 12×12 SAM map *is* cell ``i`` of the page, so we give
    ``heads`` of layer 0 a constant key and a constant query whose RoPE phases peak at the
    relative offset −144 (query at position 144+i → patch at i). Only the biases are set: the
    weights keep their random init and every parameter stays trainable, so content-based
    attention can grow from there. ``strength`` sets how sharp the peak is (5 → the two neighbouring
    patches get ~5 % each).
    """
    import torch

    encoder = model.model.vision_tower.vision_encoder
    config = encoder.config
    attention = encoder.layers[0].self_attn
    head_dim = attention.head_dim
    half = head_dim // 2
    theta = config.rope_parameters["rope_theta"]
    frequencies = theta ** (-torch.arange(half, dtype=torch.float32) * 2 / head_dim)
    phase = -tiny_num_patches() * frequencies
    group = attention.num_key_value_groups
    with torch.no_grad():
        for kv_head in sorted({head // group for head in heads}):
            key = attention.k_proj.bias[kv_head * head_dim:(kv_head + 1) * head_dim]
            key[:half] = strength
            key[half:] = 0.0
        for head in heads:
            query = attention.q_proj.bias[head * head_dim:(head + 1) * head_dim]
            query[:half] = strength * torch.cos(phase)
            query[half:] = strength * torch.sin(phase)


def tiny_num_patches() -> int:
    from deepsynth.models import tiny

    return (tiny.IMAGE_SIZE // (tiny.SAM_PATCH_SIZE * tiny.DOWNSAMPLE_RATIO)) ** 2


AUX_CELL = 16  # the reconstruction target of one vision query: its 32×32 px cell pooled to 16×16


def cell_targets(pixel_values):
    """Ink density (0 white → 1 black) of each 32×32 px cell of the page, pooled to 16×16, row-major:
    ``[batch, 144, 256]``. Query ``i`` of the vision tower learns to describe cell ``i``."""
    import torch.nn.functional as F

    from deepsynth.models import tiny

    grid = tiny.IMAGE_SIZE // (tiny.SAM_PATCH_SIZE * tiny.DOWNSAMPLE_RATIO)  # 12
    ink = (1 - pixel_values.float().mean(1, keepdim=True)) / 2
    pooled = F.avg_pool2d(ink, tiny.IMAGE_SIZE // (grid * AUX_CELL))
    cells = pooled.unfold(2, AUX_CELL, AUX_CELL).unfold(3, AUX_CELL, AUX_CELL)  # [B, 1, 12, 12, 16, 16]
    return cells.reshape(pixel_values.shape[0], grid * grid, AUX_CELL * AUX_CELL)


def train(args: argparse.Namespace) -> None:
    import torch

    from deepsynth.data.collate import DataCollator
    from deepsynth.models import tiny

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "last.pt"

    model, processor = tiny.build_embedded_model(seed=args.seed)  # random init, every weight trainable
    revived = revive_sam_init(model, args.seed)
    cell_attention_init(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if args.spelling:
        spell_embeddings(model, processor.tokenizer)
    collator = DataCollator(processor)

    # Auxiliary reconstruction loss (training only; the head is not part of the shipped model).
    # The vision tower ends in 144 learned queries that attend to the SAM patches; from scratch,
    # their attention starts uniform, the average of a mostly white page hardly changes from page to
    # page, and the language model learns to ignore the image (measured: same loss with the images
    # shuffled after 450 steps). Asking query i to reconstruct the ink of cell i of the page gives
    # the vision side a dense signal from step one, so the queries carry the text to the decoder.
    vision_queries: dict[str, torch.Tensor] = {}
    model.model.vision_tower.register_forward_hook(
        lambda module, inputs, output: vision_queries.__setitem__("last", output.last_hidden_state))
    # Attention guidance (training only): the decoder must learn where on the page the next token
    # is; without help it read the first word and guessed the rest from the language prior. One
    # head of layer 1 is asked to look at the cells of the token it has just read, one head of
    # layer 2 at the cells of the token it must write next (positions from the renderer's layout).
    # Needs the attention weights, hence eager attention in the text model while pretraining.
    text_layers = model.model.language_model.layers
    attention_maps: dict[str, torch.Tensor] = {}
    if args.align_weight > 0:
        model.config.text_config._attn_implementation = "eager"
        for name, layer in (("current", text_layers[1]), ("next", text_layers[2])):
            layer.self_attn.register_forward_hook(
                lambda module, inputs, output, name=name: attention_maps.__setitem__(name, output[1][:, 0])
                if module.training and output[1] is not None else None)
    torch.manual_seed(args.seed)
    aux_head = torch.nn.Linear(model.config.vision_config.encoder_config.hidden_size, AUX_CELL * AUX_CELL)
    torch.nn.init.zeros_(aux_head.weight)  # starts at the "blank page" prediction: normalised loss 1
    # Glyph head (training only): which characters lie in each cell (multi-label). It teaches the
    # vision side to tell letters apart with a dense, per-cell signal, so the decoder only has to
    # learn where to look; without it the decoder read the first word and guessed the rest.
    glyph_head = torch.nn.Linear(model.config.vision_config.encoder_config.hidden_size, len(CHARSET))
    torch.nn.init.zeros_(glyph_head.weight)
    torch.nn.init.constant_(glyph_head.bias, math.log(0.02 / 0.98))  # a cell holds ~2 of ~90 characters

    named = (list(model.named_parameters()) + [(f"aux_head.{n}", p) for n, p in aux_head.named_parameters()]
             + [(f"glyph_head.{n}", p) for n, p in glyph_head.named_parameters()])
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    step, train_time = 0, 0.0
    if args.resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        aux_head.load_state_dict(state["aux_head"])
        glyph_head.load_state_dict(state["glyph_head"])
        optimizer.load_state_dict(state["optimizer"])
        step, train_time = state["step"], state["train_time"]
        _log(f"resumed from {state_path}: step {step}, {train_time / 60:.1f} min trained")

    budget_s = args.minutes * 60
    n_params = sum(p.numel() for p in plain_copy(model).parameters())
    _log(f"model: {n_params / 1e6:.2f} M parameters, all trained ({revived} SAM tensors re-initialised); "
         + (f"{args.steps} steps" if args.steps else f"{args.minutes:g} min of training")
         + f", batch {args.batch_size}, lr {args.lr:g}, {torch.get_num_threads()} thread(s)")

    def progress_now() -> float:
        return step / args.steps if args.steps else train_time / budget_s

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "aux_head": aux_head.state_dict(),
                    "glyph_head": glyph_head.state_dict(),
                    "optimizer": optimizer.state_dict(), "step": step, "train_time": train_time,
                    "args": vars(args)}, tmp)
        os.replace(tmp, state_path)

    model.train()
    wall_start = time.time()
    last_save = last_eval = train_time
    losses: list[float] = []
    aux_losses: list[float] = []
    glyph_losses: list[float] = []
    align_losses: list[float] = []
    kind_counts: dict[str, int] = {}
    while progress_now() < 1.0:
        tick = time.time()
        progress = progress_now()
        rng = random.Random(f"train-{args.seed}-{step}")
        batch, glyph_targets, cell_lists, kinds = _batch(processor, collator, rng, progress, args.batch_size)
        for kind in kinds:
            kind_counts[kind] = kind_counts.get(kind, 0) + 1
        lr = _lr(step, progress, args.lr, args.warmup, args.lr_floor)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lm_loss = model(**batch).loss
        queries = vision_queries.pop("last")
        targets = cell_targets(batch["pixel_values"])
        aux_loss = torch.nn.functional.mse_loss(aux_head(queries), targets) / (targets.pow(2).mean() + 1e-4)
        glyph_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            glyph_head(queries), glyph_targets, reduction="none").sum(-1).mean()
        loss = lm_loss + args.aux_weight * aux_loss + args.glyph_weight * glyph_loss
        align = torch.zeros(())
        if args.align_weight > 0:
            rows, queries_next, positions = alignment_targets(batch, cell_lists, tiny.IMAGE_TOKEN_ID)
            # "current": the query that reads token k looks at token k's cells (k ≥ 1).
            queries_current = [q + 1 for q in queries_next]  # the position holding token k itself
            align = (alignment_loss(attention_maps.pop("next"), rows, queries_next, positions)
                     + alignment_loss(attention_maps.pop("current"), rows, queries_current, positions))
            loss = loss + args.align_weight * align
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(lm_loss.item())
        aux_losses.append(aux_loss.item())
        glyph_losses.append(glyph_loss.item())
        align_losses.append(align.item())
        step += 1
        train_time += time.time() - tick

        if step % args.log_every == 0:
            recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
            mix = " ".join(f"{k}:{v}" for k, v in sorted(kind_counts.items()))
            recent_aux = sum(aux_losses[-args.log_every:]) / len(aux_losses[-args.log_every:])
            recent_glyph = sum(glyph_losses[-args.log_every:]) / len(glyph_losses[-args.log_every:])
            recent_align = sum(align_losses[-args.log_every:]) / len(align_losses[-args.log_every:])
            _log(f"step {step}  loss {recent:.3f}  aux {recent_aux:.3f}  glyph {recent_glyph:.3f}  "
                 f"align {recent_align:.3f}  lr {lr:.2e}  progress {progress_now():.3f}  "
                 f"train {train_time / 60:.1f} min  ({train_time / step:.2f} s/step)  [{mix}]")
            kind_counts.clear()
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"loss is {losses[-1]} at step {step}")
        if train_time - last_save >= args.save_every_min * 60:
            save_state()
            save_checkpoint(plain_copy(model), work / "checkpoint")
            last_save = train_time
            _log(f"saved {state_path} and {work / 'checkpoint'}")
        if args.eval_every_min and train_time - last_eval >= args.eval_every_min * 60:
            _print_eval(f"step {step}", evaluate(model, processor, {"short_large": 16, "sentence_medium": 8}))
            real, shuffled = image_reliance(model, processor)
            _log(f"step {step} held-out loss {real:.3f}, with the pages of other samples {shuffled:.3f}")
            last_eval = train_time

    save_state()
    wall = time.time() - wall_start
    _log(f"training done: {step} steps, {train_time / 60:.1f} min of training, {wall / 60:.1f} min wall this session")

    model = plain_copy(model).eval()  # spelling folded into the plain embedding and LM-head weights
    model.config.text_config._attn_implementation = "sdpa"  # guidance is over; ship the default kernel
    out = Path(args.out)
    final_dir = work / "final"
    save_checkpoint(model, final_dir)
    check_checkpoint(model, final_dir)

    counts = {name: args.eval_samples for name in EVAL_SETS}
    results = evaluate(model, processor, counts)
    _print_eval("final", results)
    baseline, _ = tiny.build_embedded_model(seed=args.seed)
    random_results = evaluate(baseline, processor, counts)
    _print_eval("random init", random_results)
    summary = {
        "steps": step, "train_minutes": train_time / 60, "batch_size": args.batch_size, "seed": args.seed,
        "parameters": n_params, "trained": {k: v["metrics"] for k, v in results.items()},
        "random_init": {k: v["metrics"] for k, v in random_results.items()},
        "examples": {k: v["examples"] for k, v in results.items()},
    }
    (work / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    _log(f"metrics written to {work / 'metrics.json'}")

    short_cer = results["short_large"]["metrics"]["cer"]
    if short_cer >= args.max_ship_cer:
        _log(f"NOT shipping: held-out short-line CER {short_cer:.3f} >= {args.max_ship_cer}; weights left in {final_dir}")
        sys.exit(2)
    save_checkpoint(model, out)
    check_checkpoint(model, out)
    size = sum((out / name).stat().st_size for name in ("config.json", "model.safetensors"))
    _log(f"shipped {out} ({size / 1e6:.1f} MB)")


def eval_only(args: argparse.Namespace) -> None:
    import torch
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.models import tiny

    torch.set_num_threads(args.threads)
    model = DeepseekOcr2ForConditionalGeneration.from_pretrained(args.eval_only, local_files_only=True).eval()
    processor = tiny.build_processor()
    counts = {name: args.eval_samples for name in EVAL_SETS}
    results = evaluate(model, processor, counts)
    _print_eval("checkpoint", results)
    if args.with_random:
        baseline, _ = tiny.build_embedded_model(seed=args.seed)
        _print_eval("random init", evaluate(baseline, processor, counts))
    print(json.dumps({k: v["metrics"] for k, v in results.items()}, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget (default 60)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps instead of a time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where the shipped config.json + model.safetensors go")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="resumable state, checkpoints, metrics")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--lr-floor", type=float, default=0.05, help="final learning rate / peak")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--aux-weight", type=float, default=1.0,
                        help="weight of the vision queries' page-reconstruction loss (training only)")
    parser.add_argument("--glyph-weight", type=float, default=1.0,
                        help="weight of the vision queries' per-cell character loss (training only)")
    parser.add_argument("--align-weight", type=float, default=1.0,
                        help="weight of the decoder's attention-guidance loss (training only; 0 = off)")
    parser.add_argument("--no-spelling", dest="spelling", action="store_false",
                        help="train token embeddings without the (character, position) spelling features")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--save-every-min", type=float, default=5.0)
    parser.add_argument("--eval-every-min", type=float, default=10.0, help="0 = no evaluation during training")
    parser.add_argument("--eval-samples", type=int, default=50)
    parser.add_argument("--max-ship-cer", type=float, default=0.9,
                        help="refuse to ship when the held-out short-line CER is not below this "
                             "(random init scores 1.0; an hour on a 2-core CPU reaches ~0.7, docs/pretraining.md)")
    parser.add_argument("--eval-only", metavar="DIR", help="only evaluate the checkpoint in DIR")
    parser.add_argument("--with-random", action="store_true", help="--eval-only: also evaluate the random init")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.eval_only:
        eval_only(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
