"""Planted-fact retrieval check: short invented facts hidden at random places in a long text, one
question about each. A retriever passes a fact when the chunk holding it is among those it returns.
Used by the tests and bench/bench_retrieval.py; handy for checking an embedder on your own text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# (fact, question): invented, so no model can know them; phrased unlike the questions on purpose.
FACTS = [
    ("The lighthouse keeper Marisol Quintero painted her cottage door turquoise in 1987.",
     "What colour did the lighthouse keeper paint her door?"),
    ("The village of Brekkvik holds a herring festival every second Tuesday of August.",
     "When is the herring festival in Brekkvik?"),
    ("Professor Anselm Drayke keeps a collection of four hundred antique slide rules in his attic.",
     "What does Professor Drayke collect?"),
    ("The submarine cable between Tolvany and Ostrel was repaired by a crew of eleven divers.",
     "How many divers repaired the Tolvany-Ostrel cable?"),
    ("Chef Umberto Lasalle's signature dessert is a saffron and cardamom panna cotta.",
     "Which spices flavour Umberto Lasalle's panna cotta?"),
    ("The observatory on Mount Kesselring uses a mirror cast from recycled aircraft aluminium.",
     "What is the Kesselring telescope mirror made of?"),
    ("Every bicycle in the town of Hollenmark must carry a small brass bell engraved with its owner's initials.",
     "What must bicycles in Hollenmark carry?"),
    ("The password to the archive vault at the Meridian Institute was changed to 'copperfinch' last winter.",
     "What is the Meridian Institute archive password?"),
    ("Engineer Tamsin Okafor designed a bridge that sways exactly nine centimetres in strong wind.",
     "How far does Tamsin Okafor's bridge sway in the wind?"),
    ("The rare orchid Dendrobium velarii blooms only once every seven years in the Sarrow valley.",
     "How often does the velarii orchid flower?"),
    ("Captain Ilse Morrow sailed the schooner Petrel from Lisbon to Halifax in twenty-three days.",
     "How long did Ilse Morrow's voyage to Halifax take?"),
    ("The Quillfeather bakery sells a rye loaf baked with roasted dandelion root.",
     "What unusual ingredient is in the Quillfeather rye bread?"),
    ("Astronomer Rufus Penhallow discovered a comet while testing a homemade radio receiver.",
     "How did Rufus Penhallow find his comet?"),
    ("The chess club of Vantmoor meets in the back room of a laundromat on Thursdays.",
     "Where does the Vantmoor chess club meet?"),
    ("The robot vacuum model ZX-40 maps a room using the echo of a faint clicking sound.",
     "How does the ZX-40 vacuum map rooms?"),
    ("Linguist Odile Ferrand recorded the last fluent speaker of the Tarvesh dialect in 1974.",
     "Who recorded the last speaker of Tarvesh?"),
    ("The annual kite contest at Dunmore beach was won by a kite shaped like a giant squid.",
     "What shape was the winning kite at Dunmore beach?"),
    ("Glassblower Henrik Aalto uses volcanic sand from Iceland to tint his vases green.",
     "Why are Henrik Aalto's vases green?"),
    ("The Ferris wheel at Calloway Pier has thirty-two gondolas painted in alternating red and gold.",
     "How many gondolas does the Calloway Pier wheel have?"),
    ("Botanist Priya Raghunathan grew a pumpkin weighing 412 kilograms in a greenhouse in Pune.",
     "How heavy was Priya Raghunathan's pumpkin?"),
    ("The train from Esterby to Quorn stops at a station that has no road access at all.",
     "Which station on the Esterby line cannot be reached by road?"),
    ("Violinist Mateo Sandoval performs on an instrument carved from a fallen walnut tree.",
     "What wood is Mateo Sandoval's violin made from?"),
    ("The mayor of Pellingham banned leaf blowers before eight in the morning.",
     "What did the Pellingham mayor ban?"),
    ("Software engineer Greta Lindqvist wrote a compiler for a language that uses only emoji.",
     "What kind of language did Greta Lindqvist write a compiler for?"),
    ("The Harrowgate zoo's oldest tortoise, named Biscuit, is one hundred and twelve years old.",
     "How old is the tortoise at the Harrowgate zoo?"),
    ("A storm in March flooded the basement of the Corvallis municipal library with forty centimetres of water.",
     "What happened to the Corvallis library basement?"),
    ("Cartographer Yusuf Demir mapped the underground rivers beneath the city of Kastral.",
     "What did Yusuf Demir map?"),
    ("The fishing boat Saltwren hauled in a lobster with a bright blue shell off the coast of Maine.",
     "What unusual catch did the Saltwren bring in?"),
    ("Nurse Abigail Thorncastle knitted eight hundred hats for newborns at St. Brigid's hospital.",
     "How many hats did Abigail Thorncastle knit?"),
    ("The tallest sunflower ever grown in Wexley reached five metres and sixty centimetres.",
     "How tall was the record sunflower in Wexley?"),
    ("Physicist Lorenzo Ricci measured the speed of sound in helium using a cardboard tube and a microphone.",
     "What equipment did Lorenzo Ricci use for his helium measurement?"),
    ("The bookshop Inkwell & Fern stays open until three in the morning on full-moon nights.",
     "When does Inkwell & Fern stay open late?"),
    ("Racing pigeon number 7731 flew home from Barcelona to Antwerp in a single day.",
     "How fast did pigeon 7731 return to Antwerp?"),
    ("The Ostrava robotics team built a machine that folds paper cranes in under a minute.",
     "What can the Ostrava robotics team's machine do?"),
    ("Beekeeper Ngozi Eze moves her hives to the clover fields of Ardmore every June.",
     "Where does Ngozi Eze take her bees in summer?"),
    ("The ferry Marguerite carries exactly sixty cars and two hundred passengers across the strait.",
     "What is the capacity of the ferry Marguerite?"),
    ("Architect Soren Vail designed a school whose roof collects rainwater for the toilets.",
     "What does the roof of Soren Vail's school do?"),
    ("The old clock tower in Grimsby Hollow runs eleven minutes slow on purpose, to honour a legend.",
     "Why is the Grimsby Hollow clock late?"),
    ("Marathon runner Keiko Tanabe trains by running up the stairs of a forty-storey office tower.",
     "How does Keiko Tanabe train?"),
    ("The museum in Lorwick displays a meteorite that fell through a farmer's barn roof in 1921.",
     "Where did the Lorwick meteorite land?"),
    ("Puppeteer Dmitri Volkov's marionettes are strung with fishing line and controlled by foot pedals.",
     "How are Dmitri Volkov's puppets operated?"),
    ("The cheese cave of Saint-Aubert ages wheels of cheese for exactly nineteen months.",
     "How long is cheese aged in the Saint-Aubert cave?"),
    ("Pilot Harriet Osei landed a seaplane on a frozen lake after her engine failed.",
     "Where did Harriet Osei land when her engine failed?"),
    ("The printing press at Greyfriars Lane still uses wooden type carved in 1880.",
     "What type does the Greyfriars Lane press use?"),
    ("Mathematician Elias Brandt proved his theorem on a napkin in a railway cafe in Basel.",
     "Where did Elias Brandt write down his proof?"),
    ("The lake near Ulvenfjord turns pink in late summer because of a salt-loving alga.",
     "Why does the Ulvenfjord lake turn pink?"),
    ("Tailor Rosalind Achebe sews a hidden pocket for a lucky coin into every suit she makes.",
     "What secret does Rosalind Achebe sew into her suits?"),
    ("The volunteer fire brigade of Mossbury owns a restored 1952 fire engine named Dorothy.",
     "What is the name of Mossbury's old fire engine?"),
    ("Ornithologist Felix Harrow counted nine thousand starlings roosting under the Tamar bridge.",
     "How many starlings did Felix Harrow count?"),
    ("The recipe for Aunt Wilhelmina's plum jam calls for a spoonful of black pepper.",
     "What surprising ingredient goes into Aunt Wilhelmina's jam?"),
]

_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass
class PlantedDocument:
    text: str
    spans: list      # [(start, end)] of each fact in `text`, in FACTS order
    questions: list  # the question about each fact, in the same order


def plant(text: str, facts=FACTS, seed: int = 0) -> PlantedDocument:
    """Insert each fact as one more sentence right after a randomly chosen sentence end of `text`
    (distinct ones, so two facts never share an insertion point)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if len(ends) < len(facts):
        raise ValueError(f"text has only {len(ends)} sentence ends to plant {len(facts)} facts after")
    rng = np.random.default_rng(seed)
    where = sorted(rng.choice(len(ends), size=len(facts), replace=False))
    order = rng.permutation(len(facts))  # which fact goes where: not in list order
    pieces, spans, pos, out_len = [], [None] * len(facts), 0, 0
    for slot, fact_id in zip(where, order):
        cut = ends[slot]
        pieces.append(text[pos:cut] + " ")
        out_len += cut - pos + 1
        fact = facts[fact_id][0]
        pieces.append(fact)
        spans[fact_id] = (out_len, out_len + len(fact))
        out_len += len(fact)
        pos = cut
    pieces.append(text[pos:])
    return PlantedDocument("".join(pieces), spans, [facts[i][1] for i in range(len(facts))])


def hits(chunks, span) -> bool:
    """True when one of `chunks` contains the whole fact at `span`."""
    return any(c.start <= span[0] and span[1] <= c.end for c in chunks)
