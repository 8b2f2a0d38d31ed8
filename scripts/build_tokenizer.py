#!/usr/bin/env python
"""Build the tokenizer shipped with DeepSynth's embedded tiny model, reproducibly and offline.

The embedded default model (``deepsynth/tiny-ocr2``) must work without any download, so its
tokenizer is trained here: a byte-level BPE (every byte is in the alphabet, so no text is ever
unknown) on a French corpus that this script generates from word lists and sentence templates
with a fixed seed. The special tokens are DeepSeek-OCR's own strings, so prompts written for the
real models (``<image>\\nFree OCR.``) work unchanged.

Usage::

    python scripts/build_tokenizer.py                 # rewrite src/deepsynth/models/assets/tokenizer
    python scripts/build_tokenizer.py --output DIR    # build elsewhere (tests compare the result)
    python scripts/build_tokenizer.py --check         # exit 1 if the shipped files differ from a rebuild

Running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import filecmp
import random
import sys
import tempfile
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src" / "deepsynth" / "models" / "assets" / "tokenizer"

VOCAB_SIZE = 4096
SEED = 1234
NUM_SENTENCES = 60_000

# DeepSeek-OCR's special tokens (shared/reference/deepseek-ocr/special_tokens_map.json), written with
# escapes because the fullwidth bar (U+FF5C) and the lower block (U+2581) look like ASCII.
BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD = "<\uff5c\u2581pad\u2581\uff5c>"
IMAGE = "<image>"
# Extra markers used in DeepSeek-OCR prompts; kept whole so they never split into bytes.
EXTRA_SPECIALS = ["<|grounding|>", "<|User|>", "<|Assistant|>"]
# Order fixes the ids: bos 0, eos 1, pad 2, <image> 3 (the embedded config relies on these).
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, *EXTRA_SPECIALS]

# ----------------------------------------------------------------------------------------------
# French corpus generator. Word lists are small; inflection and templates multiply them into
# tens of thousands of distinct sentences with the accents, elisions and punctuation of real text.
# ----------------------------------------------------------------------------------------------

NOUNS_M = (
    "document rapport résumé contrat article projet budget marché client service produit prix "
    "bâtiment hôpital médecin élève étudiant professeur ingénieur employé directeur ministre "
    "gouvernement conseil comité règlement délai paiement impôt salaire emploi travail bureau "
    "véhicule trajet voyage séjour hôtel restaurant repas fromage vin pain café thé gâteau "
    "château village quartier département pays continent océan fleuve lac été hiver automne "
    "printemps matin soir mois siècle événement résultat problème système réseau logiciel "
    "ordinateur téléphone écran clavier fichier dossier courrier message échange accord débat "
    "procès tribunal juge avocat témoin théâtre cinéma musée spectacle concert livre roman "
    "journal magazine chapitre paragraphe tableau graphique schéma modèle exemple élément "
    "critère objectif enjeu risque coût bénéfice chiffre nombre pourcentage taux niveau degré "
    "climat environnement développement réchauffement océan sol arbre jardin champ agriculteur "
    "élevage troupeau cheval chien chat oiseau poisson enfant adulte père frère oncle cousin "
    "ami voisin citoyen électeur député sénateur maire préfet commissaire inspecteur"
).split()
NOUNS_F = (
    "lettre facture décision réunion entreprise société équipe école université région ville "
    "capitale forêt montagne rivière plage île mer campagne saison année semaine journée soirée "
    "nuit heure minute étude analyse enquête réponse question demande proposition loi réforme "
    "politique économie santé éducation recherche science médecine technologie énergie industrie "
    "agriculture culture histoire géographie littérature musique peinture sculpture architecture "
    "page ligne phrase lettre signature adresse date durée période étape méthode stratégie "
    "croissance baisse hausse dépense recette vente commande livraison qualité quantité sécurité "
    "liberté égalité fraternité république nation démocratie élection campagne mairie préfecture "
    "assemblée commission fédération association coopérative banque assurance retraite santé "
    "maladie épidémie vaccination pharmacie clinique infirmière patiente famille mère sœur tante "
    "cousine amie voisine fenêtre porte chambre cuisine maison voiture route rue avenue place gare "
    "télévision radio presse revue note remarque conclusion introduction synthèse conférence"
).split()
ADJECTIVES = (
    "important nouveau grand petit premier dernier public privé national régional local général "
    "économique politique social culturel scientifique médical juridique technique financier "
    "annuel mensuel quotidien récent ancien moderne actuel futur prochain précédent principal "
    "essentiel nécessaire possible difficile facile complet précis clair simple complexe rapide "
    "lent fort faible long court élevé bas haut large étroit riche pauvre célèbre connu inconnu "
    "français européen international mondial parisien lyonnais breton normand provençal alsacien "
    "vert bleu rouge blanc noir gris doré agréable désagréable sérieux heureux joyeux inquiet "
    "préoccupant encourageant décevant remarquable exceptionnel habituel régulier supplémentaire"
).split()
VERBS = {  # infinitive: (présent 3sg, présent 3pl, participe passé)
    "présenter": ("présente", "présentent", "présenté"),
    "analyser": ("analyse", "analysent", "analysé"),
    "décrire": ("décrit", "décrivent", "décrit"),
    "proposer": ("propose", "proposent", "proposé"),
    "annoncer": ("annonce", "annoncent", "annoncé"),
    "préparer": ("prépare", "préparent", "préparé"),
    "signer": ("signe", "signent", "signé"),
    "envoyer": ("envoie", "envoient", "envoyé"),
    "recevoir": ("reçoit", "reçoivent", "reçu"),
    "étudier": ("étudie", "étudient", "étudié"),
    "réduire": ("réduit", "réduisent", "réduit"),
    "augmenter": ("augmente", "augmentent", "augmenté"),
    "améliorer": ("améliore", "améliorent", "amélioré"),
    "créer": ("crée", "créent", "créé"),
    "développer": ("développe", "développent", "développé"),
    "financer": ("finance", "financent", "financé"),
    "construire": ("construit", "construisent", "construit"),
    "visiter": ("visite", "visitent", "visité"),
    "écrire": ("écrit", "écrivent", "écrit"),
    "lire": ("lit", "lisent", "lu"),
    "voir": ("voit", "voient", "vu"),
    "prendre": ("prend", "prennent", "pris"),
    "mettre": ("met", "mettent", "mis"),
    "faire": ("fait", "font", "fait"),
    "obtenir": ("obtient", "obtiennent", "obtenu"),
    "choisir": ("choisit", "choisissent", "choisi"),
    "réussir": ("réussit", "réussissent", "réussi"),
    "organiser": ("organise", "organisent", "organisé"),
    "vérifier": ("vérifie", "vérifient", "vérifié"),
    "expliquer": ("explique", "expliquent", "expliqué"),
    "résumer": ("résume", "résument", "résumé"),
    "transcrire": ("transcrit", "transcrivent", "transcrit"),
    "publier": ("publie", "publient", "publié"),
    "approuver": ("approuve", "approuvent", "approuvé"),
    "rejeter": ("rejette", "rejettent", "rejeté"),
    "préciser": ("précise", "précisent", "précisé"),
    "soutenir": ("soutient", "soutiennent", "soutenu"),
    "accueillir": ("accueille", "accueillent", "accueilli"),
}
SUBJECTS_SG = (
    "le directeur", "la directrice", "le ministre", "la commission", "le conseil municipal",
    "l'entreprise", "l'équipe", "le comité", "la société", "le rapport", "l'étude", "le médecin",
    "la mairie", "l'association", "le gouvernement", "la région", "l'université", "le tribunal",
    "notre service", "votre banque", "cette enquête", "ce document", "chaque élève", "il", "elle", "on",
)
SUBJECTS_PL = (
    "les élèves", "les habitants", "les députés", "les chercheurs", "les clients", "les employés",
    "les agriculteurs", "les médecins", "les experts", "les entreprises", "ils", "elles",
    "nos équipes", "vos collègues", "ces études", "plusieurs associations", "les syndicats",
)
PLACES = (
    "Paris", "Lyon", "Marseille", "Toulouse", "Bordeaux", "Lille", "Nantes", "Strasbourg", "Rennes",
    "Montpellier", "Nice", "Grenoble", "Dijon", "Besançon", "Orléans", "Québec", "Montréal",
    "Genève", "Lausanne", "Bruxelles", "Liège", "Dakar", "Abidjan", "Alger", "Tunis", "Évry",
    "Créteil", "Nîmes", "Béziers", "Angoulême", "Châlons", "Fréjus", "Épinal", "Île-de-France",
)
NAMES = (
    "Jean", "Marie", "Pierre", "Sophie", "François", "Hélène", "Jérôme", "Cécile", "Noël", "Zoé",
    "Raphaël", "Anaïs", "Loïc", "Maëlle", "Benoît", "Gaëlle", "Thérèse", "André", "Élise", "Joël",
    "Dupont", "Martin", "Bernard", "Lefèvre", "Moreau", "Girard", "Fontaine", "Chevalier", "Leroy",
)
MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
    "octobre", "novembre", "décembre",
)
DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
CONNECTORS = (
    "Cependant", "Par ailleurs", "En outre", "De plus", "Néanmoins", "Ainsi", "En effet", "Enfin",
    "Toutefois", "Par conséquent", "D'une part", "D'autre part", "En résumé", "Selon le rapport",
    "À l'inverse", "Au début", "À la fin", "Après réflexion", "Dès lors", "Malgré tout", "Bref",
)
ADVERBS = (
    "rapidement", "lentement", "clairement", "précisément", "également", "déjà", "toujours",
    "souvent", "rarement", "désormais", "aujourd'hui", "hier", "demain", "très", "trop", "assez",
    "beaucoup", "peu", "bientôt", "récemment", "finalement", "probablement", "sûrement",
)
# Sentences met in DeepSeek-OCR prompts and in summaries, so they tokenize compactly.
FIXED_LINES = (
    "Free OCR.", "Convert the document to markdown.", "Résume ce document.",
    "Résumez ce document en quelques phrases.", "Transcris le texte de cette page.",
    "Voici le résumé du document :", "Objet : demande de renseignements",
    "Madame, Monsieur,", "Veuillez agréer l'expression de mes salutations distinguées.",
    "Je vous prie d'agréer, Madame, Monsieur, mes sincères salutations.",
    "Ce document présente les principaux résultats de l'étude.",
    "Le texte décrit la situation économique de la région.",
    "Ça coûte 12,50 € TTC ; l'offre est valable jusqu'au 31/12.",
    "« Où est-ce que tu vas ? » demanda-t-elle. — « À l'école ! »",
    "L'œuvre, créée en 1889, fut exposée à Paris ; elle reçut un accueil enthousiaste.",
    "Noël, Pâques, la Toussaint et le 14 Juillet sont des jours fériés en France.",
    "Les cœurs, les sœurs, les vœux et les bœufs s'écrivent avec « œ ».",
    "Tableau 1 : évolution du chiffre d'affaires (en milliers d'euros).",
    "# Titre\n\n## Sous-titre\n\n- premier point\n- deuxième point\n\n**Important** : *à vérifier*.",
    "| Année | Recettes | Dépenses |\n|---|---|---|\n| 2023 | 1 250 | 980 |",
)


def _inflect_noun(noun: str, plural: bool) -> str:
    if not plural:
        return noun
    if noun.endswith(("s", "x", "z")):
        return noun
    if noun.endswith("eau") or noun.endswith("eu"):
        return noun + "x"
    if noun.endswith("al") and noun not in {"festival", "bal"}:
        return noun[:-2] + "aux"
    return noun + "s"


def _inflect_adjective(adjective: str, feminine: bool, plural: bool) -> str:
    form = adjective
    if feminine:
        special = {"nouveau": "nouvelle", "premier": "première", "dernier": "dernière", "public": "publique",
                   "blanc": "blanche", "long": "longue", "heureux": "heureuse", "joyeux": "joyeuse",
                   "sérieux": "sérieuse", "inquiet": "inquiète", "bas": "basse", "gris": "grise",
                   "financier": "financière", "régulier": "régulière", "ancien": "ancienne",
                   "européen": "européenne", "parisien": "parisienne", "breton": "bretonne",
                   "annuel": "annuelle", "mensuel": "mensuelle", "actuel": "actuelle",
                   "culturel": "culturelle", "exceptionnel": "exceptionnelle", "national": "nationale",
                   "futur": "future", "précis": "précise", "complet": "complète", "doré": "dorée"}
        if adjective in special:
            form = special[adjective]
        elif adjective.endswith("e"):
            form = adjective
        else:
            form = adjective + "e"
    if plural:
        if form.endswith("al") and not feminine:
            form = form[:-2] + "aux"
        elif form.endswith("eau"):
            form += "x"
        elif not form.endswith(("s", "x")):
            form += "s"
    return form


def _noun_phrase(rng: random.Random) -> str:
    feminine = rng.random() < 0.5
    plural = rng.random() < 0.35
    noun = rng.choice(NOUNS_F if feminine else NOUNS_M)
    noun_form = _inflect_noun(noun, plural)
    if plural:
        article = rng.choice(("les", "des", "ces", "nos", "leurs", "plusieurs", "quelques"))
    elif noun[0] in "aeiouéèêhâîô":
        article = rng.choice(("l'", "cet " if not feminine else "cette ", "son ", "un " if not feminine else "une "))
    else:
        article = rng.choice(
            ("la ", "une ", "cette ", "sa ", "notre ") if feminine else ("le ", "un ", "ce ", "son ", "notre ")
        )
    if plural:
        article += " "
    phrase = f"{article}{noun_form}"
    if rng.random() < 0.6:
        phrase += " " + _inflect_adjective(rng.choice(ADJECTIVES), feminine, plural)
    return phrase


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return str(rng.randint(0, 100))
    if kind < 0.5:
        return f"{rng.randint(1, 999)} {rng.randint(0, 999):03d}"
    if kind < 0.7:
        return f"{rng.randint(0, 99)},{rng.randint(0, 99):02d}"
    if kind < 0.85:
        return f"{rng.randint(1, 99)} %"
    return str(rng.randint(1900, 2030))


def _date(rng: random.Random) -> str:
    day = rng.randint(1, 28)
    if rng.random() < 0.5:
        return f"le {rng.choice(DAYS)} {day} {rng.choice(MONTHS)} {rng.randint(1950, 2030)}"
    return f"{day:02d}/{rng.randint(1, 12):02d}/{rng.randint(1950, 2030)}"


def _sentence(rng: random.Random) -> str:
    infinitive = rng.choice(sorted(VERBS))
    present_sg, present_pl, participle = VERBS[infinitive]
    plural = rng.random() < 0.4
    subject = rng.choice(SUBJECTS_PL if plural else SUBJECTS_SG)
    template = rng.randrange(9)
    if template == 0:
        body = f"{subject} {present_pl if plural else present_sg} {_noun_phrase(rng)}"
    elif template == 1:
        aux = "ont" if plural else "a"
        body = f"{subject} {aux} {rng.choice(ADVERBS)} {participle} {_noun_phrase(rng)} à {rng.choice(PLACES)}"
    elif template == 2:
        body = f"{_noun_phrase(rng)} {rng.choice(('sera', 'a été', 'est', 'devrait être'))} {participle} {_date(rng)}"
    elif template == 3:
        body = (
            f"selon {rng.choice(NAMES)} {rng.choice(NAMES)}, {_noun_phrase(rng)} représente "
            f"{_number(rng)} {rng.choice(('euros', 'habitants', 'personnes', 'kilomètres', 'tonnes'))}"
        )
        body = body[0].upper() + body[1:]
    elif template == 4:
        body = f"{rng.choice(CONNECTORS)}, {subject} {present_pl if plural else present_sg} {_noun_phrase(rng)}"
    elif template == 5:
        body = (
            f"{subject} {'doivent' if plural else 'doit'} {infinitive} {_noun_phrase(rng)} "
            f"avant {_date(rng)}"
        )
    elif template == 6:
        body = (
            f"pourquoi {subject} {present_pl if plural else present_sg}-{'ils' if plural else 'il'} "
            f"{_noun_phrase(rng)} ?"
        )
        return body[0].upper() + body[1:]
    elif template == 7:
        body = f"« {_noun_phrase(rng).capitalize()} », {rng.choice(('dit', 'écrit', 'précise'))} {rng.choice(NAMES)}"
    else:
        body = (
            f"en {rng.choice(MONTHS)}, {_noun_phrase(rng)} et {_noun_phrase(rng)} "
            f"{rng.choice(('ont progressé', 'ont baissé', 'sont restés stables'))} de {_number(rng)}"
        )
    body = body[0].upper() + body[1:]
    return body + rng.choice((".", ".", ".", " !", " ;", " :", "…"))


def generate_corpus(num_sentences: int = NUM_SENTENCES, seed: int = SEED) -> list[str]:
    """Deterministic French text: paragraphs of generated sentences plus fixed prompt lines."""
    rng = random.Random(seed)
    lines = list(FIXED_LINES) * 20
    sentences = [_sentence(rng) for _ in range(num_sentences)]
    for start in range(0, len(sentences), 5):
        lines.append(" ".join(sentences[start:start + 5]))
    return lines


def build_tokenizer(output_dir: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the byte-level BPE and save it as a transformers tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # NFC so "é" typed as e + combining accent and "é" precomposed give the same tokens.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(generate_corpus(), trainer=trainer)
    # trim_offsets=False: the byte-level processor would otherwise shift offsets; BOS first like
    # DeepSeek-OCR's tokenizer (add_bos_token=True there).
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))],
    )

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IMAGE, *EXTRA_SPECIALS],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(output_dir))
    return output_dir


def _same_files(left: Path, right: Path) -> bool:
    names = sorted(p.name for p in left.iterdir())
    if names != sorted(p.name for p in right.iterdir()):
        return False
    return all(filecmp.cmp(left / name, right / name, shallow=False) for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="directory to write (default: the shipped assets)"
    )
    parser.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with --output")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build_tokenizer(Path(tmp))
            if not _same_files(Path(tmp), args.output):
                print(f"{args.output} differs from a fresh build; run scripts/build_tokenizer.py", file=sys.stderr)
                return 1
        print(f"{args.output} is up to date")
        return 0
    out = build_tokenizer(args.output)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
