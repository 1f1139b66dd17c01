"""Synthetic oncology cohort for the sandbox: a deterministic generator, the committed Bundles and the loader.

Why generated, not hand-written: ~35 patients with months of labs would be thousands of lines of JSON that
nobody could review; the scenario table below is the reviewable part, the Bundles are its output
(`python -m service.sandbox.cohort --write` regenerates them, `--check` verifies the committed copies).

Dates: every date is generated relative to the fixed ANCHOR (the "today" of the data). At load time the whole
cohort is shifted so that ANCHOR becomes *now*: dateTimes move by (now - ANCHOR), plain dates by the same number
of days. Labs, encounters and treatment windows therefore stay recent whenever the sandbox is first started.

Loading is idempotent: every resource has a client-assigned id and is PUT in one transaction per Bundle; the key
resource of each Bundle carries a meta.tag with the hash of that Bundle, so a second start with an unchanged
cohort writes nothing, and a changed cohort (or `reset=True`) is written again.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from service.canonical import (ATC, BASE, CS_PRECAUTION, CS_SETTING, ICD10CM, ID_PRESCRIPTION, LOINC,
                               PA_TEMPORARY_CODES, RXNORM, SNOMED, UCUM, pa_sd_url, sd_url)

from service.sandbox.cohort_realworld import REALWORLD

log = logging.getLogger("onco.sandbox.cohort")

SEED = 20250115
ANCHOR = datetime(2025, 1, 15, 12, 0, tzinfo=timezone.utc)
COHORT_DIR = Path(__file__).parent / "cohort"
CS_COHORT_TAG = f"{BASE}/CodeSystem/sandbox-cohort"

CLINICIAN = "Practitioner/sandbox-clinician"
HOSPITAL = "Organization/sandbox-hospital"
EXERCISE_SERVICE = "Organization/exercise-oncology-service"
COMMUNITY_PROGRAMME = "Organization/community-exercise-programme"

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
SDOHCC_TEMP = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
MCODE = "http://hl7.org/fhir/us/mcode/StructureDefinition"
MRN_SYSTEM = f"{BASE}/sandbox/mrn"

# ---------------------------------------------------------------------------------------------------------
# Vocabulary used by the generator (standard codes; the terminology/ value sets decide what the rules read)
# ---------------------------------------------------------------------------------------------------------

# cancer key -> (SNOMED code, SNOMED display, ICD-10-CM code, ICD display, category tag)
CANCERS: dict[str, tuple[str, str, str, str, str]] = {
    "breast-right": ("254837009", "Malignant neoplasm of breast", "C50.911",
                     "Malignant neoplasm of unspecified site of right female breast", "breast"),
    "breast-left": ("254837009", "Malignant neoplasm of breast", "C50.912",
                    "Malignant neoplasm of unspecified site of left female breast", "breast"),
    "prostate": ("399068003", "Malignant tumor of prostate", "C61", "Malignant neoplasm of prostate", "prostate"),
    "colon": ("363406005", "Malignant tumor of colon", "C18.7", "Malignant neoplasm of sigmoid colon",
              "colorectal"),
    "rectum": ("363351006", "Malignant tumor of rectum", "C20", "Malignant neoplasm of rectum", "colorectal"),
    "nsclc": ("254637007", "Non-small cell lung cancer", "C34.11",
              "Malignant neoplasm of upper lobe, right bronchus or lung", "lung"),
    "sclc": ("254632001", "Small cell carcinoma of lung", "C34.91",
             "Malignant neoplasm of unspecified part of right bronchus or lung", "lung"),
    "dlbcl": ("109969005", "Diffuse large B-cell lymphoma", "C83.30",
              "Diffuse large B-cell lymphoma, unspecified site", "haematological"),
    "aml": ("91861009", "Acute myeloid leukemia", "C92.00",
            "Acute myeloblastic leukemia, not having achieved remission", "haematological"),
    "myeloma": ("109989006", "Multiple myeloma", "C90.00", "Multiple myeloma not having achieved remission",
                "haematological"),
    "cll": ("92814006", "Chronic lymphoid leukemia", "C91.10",
            "Chronic lymphocytic leukemia of B-cell type not having achieved remission", "haematological"),
    "hodgkin": ("118599009", "Hodgkin's disease", "C81.90", "Hodgkin lymphoma, unspecified, unspecified site",
                "haematological"),
    "pancreas": ("363418001", "Malignant tumor of pancreas", "C25.9", "Malignant neoplasm of pancreas, unspecified",
                 "pancreas"),
    "melanoma": ("372244006", "Malignant melanoma", "C43.62",
                 "Malignant melanoma of left upper limb, including shoulder", "melanoma"),
    "ovary": ("363443007", "Malignant tumor of ovary", "C56.9", "Malignant neoplasm of unspecified ovary", "ovarian"),
    "head-neck": ("363505006", "Malignant tumor of tonsil", "C09.9", "Malignant neoplasm of tonsil, unspecified",
                  "head-and-neck"),
    "testis": ("363449006", "Malignant tumor of testis", "C62.92",
               "Malignant neoplasm of left testis, unspecified whether descended or undescended", "testicular"),
    "bone-sarcoma": ("307576001", "Osteosarcoma of bone", "C40.20",
                     "Malignant neoplasm of long bones of unspecified lower limb", "sarcoma"),
}

# secondary / comorbid conditions: key -> (SNOMED, display, ICD-10-CM, ICD display, tag)
CONDITIONS: dict[str, tuple[str, str, str, str, str]] = {
    "bone-mets": ("94222008", "Secondary malignant neoplasm of bone", "C79.51",
                  "Secondary malignant neoplasm of bone", "bone-metastases"),
    "liver-mets": ("94381002", "Secondary malignant neoplasm of liver", "C78.7",
                   "Secondary malignant neoplasm of liver and intrahepatic bile duct", "visceral-metastases"),
    "neuropathy": ("302226006", "Peripheral nerve disease", "G62.0", "Drug-induced polyneuropathy", "neuropathy"),
    "lymphoedema": ("234097001", "Lymphedema", "I97.2", "Postmastectomy lymphedema syndrome", "lymphoedema"),
    "heart-failure": ("84114007", "Heart failure", "I50.22", "Chronic systolic (congestive) heart failure",
                      "heart-failure"),
    "diabetes": ("44054006", "Diabetes mellitus type 2", "E11.9", "Type 2 diabetes mellitus without complications",
                 "diabetes"),
    "osteoporosis": ("64859006", "Osteoporosis", "M81.0", "Age-related osteoporosis without current pathological "
                     "fracture", "osteoporosis"),
    "falls": ("161898004", "History of falls", "Z91.81", "History of falling", "falls"),
    "hypertension": ("38341003", "Hypertensive disorder, systemic arterial", "I10", "Essential (primary) hypertension",
                     "hypertension"),
    "copd": ("13645005", "Chronic obstructive lung disease", "J44.9", "Chronic obstructive pulmonary disease, "
             "unspecified", "copd"),
    "knee-oa": ("239873007", "Osteoarthritis of knee", "M17.11", "Unilateral primary osteoarthritis, right knee",
                "arthritis"),
}

# drug key -> (RxNorm, name, ATC, treatment kind, cardiotoxic)
DRUGS: dict[str, tuple[str, str, str, str, bool]] = {
    "doxorubicin": ("3639", "doxorubicin", "L01DB01", "chemotherapy", True),
    "cyclophosphamide": ("3002", "cyclophosphamide", "L01AA01", "chemotherapy", False),
    "paclitaxel": ("56946", "paclitaxel", "L01CD01", "chemotherapy", False),
    "trastuzumab": ("224905", "trastuzumab", "L01FD01", "targeted", True),
    "carboplatin": ("40048", "carboplatin", "L01XA02", "chemotherapy", False),
    "oxaliplatin": ("32592", "oxaliplatin", "L01XA03", "chemotherapy", False),
    "fluorouracil": ("4492", "fluorouracil", "L01BC02", "chemotherapy", False),
    "capecitabine": ("194000", "capecitabine", "L01BC06", "chemotherapy", False),
    "irinotecan": ("51499", "irinotecan", "L01CE02", "chemotherapy", False),
    "bevacizumab": ("253337", "bevacizumab", "L01FG01", "targeted", False),
    "pemetrexed": ("68446", "pemetrexed", "L01BA04", "chemotherapy", False),
    "etoposide": ("4179", "etoposide", "L01CB01", "chemotherapy", False),
    "pembrolizumab": ("1547545", "pembrolizumab", "L01FF02", "immunotherapy", False),
    "nivolumab": ("1597876", "nivolumab", "L01FF01", "immunotherapy", False),
    "osimertinib": ("1721560", "osimertinib", "L01EB04", "targeted", False),
    "palbociclib": ("1601374", "palbociclib", "L01EF01", "targeted", False),
    "rituximab": ("121191", "rituximab", "L01FA01", "targeted", False),
    "vincristine": ("11202", "vincristine", "L01CA02", "chemotherapy", False),
    "cytarabine": ("3041", "cytarabine", "L01BC01", "chemotherapy", False),
    "daunorubicin": ("3109", "daunorubicin", "L01DB02", "chemotherapy", True),
    "bortezomib": ("358258", "bortezomib", "L01XG01", "chemotherapy", False),
    "gemcitabine": ("12574", "gemcitabine", "L01BC05", "chemotherapy", False),
    "letrozole": ("72965", "letrozole", "L02BG04", "endocrine", False),
    "leuprolide": ("42375", "leuprolide", "L02AE02", "endocrine", False),
    "enzalutamide": ("1307298", "enzalutamide", "L02BB04", "endocrine", False),
    "bisoprolol": ("19484", "bisoprolol", "C07AB07", "other", False),
    "metformin": ("6809", "metformin", "A10BA02", "other", False),
}

# procedure key -> (SNOMED, display, kind)
PROCEDURES: dict[str, tuple[str, str, str]] = {
    "mastectomy": ("69031006", "Excision of breast tissue", "surgery"),
    "lumpectomy": ("392021009", "Lumpectomy of breast", "surgery"),
    "prostatectomy": ("90470006", "Prostatectomy", "surgery"),
    "colectomy": ("26390003", "Total colectomy", "surgery"),
    "lobectomy": ("173171007", "Lobectomy of lung", "surgery"),
    "orchiectomy": ("236334002", "Radical orchidectomy", "surgery"),
    "radiotherapy": ("1217123003", "Radiotherapy course of treatment", "radiotherapy"),
    "chemotherapy": ("367336001", "Chemotherapy", "chemotherapy"),
    "immunotherapy": ("76334006", "Immunotherapy", "immunotherapy"),
}

# measure -> (LOINC, display, UCUM unit, alternative unit, factor to alternative, category)
MEASURES: dict[str, tuple[str, str, str, str | None, float, str]] = {
    "hemoglobin": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/L", 10.0, "laboratory"),
    "platelets": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "10*9/L", 1.0,
                  "laboratory"),
    "anc": ("751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*3/uL", "10*9/L", 1.0, "laboratory"),
    "wbc": ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", None, 1.0, "laboratory"),
    "temperature": ("8310-5", "Body temperature", "Cel", "[degF]", 0.0, "vital-signs"),
    "weight": ("29463-7", "Body weight", "kg", "[lb_av]", 2.20462, "vital-signs"),
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", None, 1.0, "vital-signs"),
    "heart-rate": ("8867-4", "Heart rate", "/min", None, 1.0, "vital-signs"),
    "resting-heart-rate": ("40443-4", "Heart rate --resting", "/min", None, 1.0, "vital-signs"),
    "pain": ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "{score}", None, 1.0,
             "survey"),
    "six-minute-walk": ("64098-7", "Six minute walk test distance", "m", None, 1.0, "exam"),
    "grip-right": ("83174-3", "Grip strength Hand - right Dynamometer", "kg", None, 1.0, "exam"),
    "tug": ("89423-8", "Timed up and go test [Time]", "s", None, 1.0, "exam"),
    "sit-to-stand": ("66247-8", "30 second chair stand test [#]", "{#}", None, 1.0, "exam"),
    "lvef": ("10230-1", "Left ventricular Ejection fraction", "%", None, 1.0, "imaging"),
    "evs-days": ("89555-7", "How many days per week did you engage in moderate to strenuous physical activity "
                 "in the last 30 days", "d/wk", None, 1.0, "activity"),
    "evs-minutes-day": ("68516-4", "On those days that you engage in moderate to strenuous exercise, how many "
                        "minutes, on average, do you exercise", "min/d", None, 1.0, "activity"),
    "evs-minutes-week": ("82290-8", "Frequency of moderate to vigorous aerobic physical activity", "min/wk", None,
                         1.0, "activity"),
}
ECOG_LOINC = ("89247-1", "ECOG Performance Status score")
KARNOFSKY_LOINC = ("89243-0", "Karnofsky Performance Status score")
BP = ("85354-9", "Blood pressure panel with all children optional", "8480-6", "8462-4")

NORMAL_LABS = {"hemoglobin": {"female": 13.4, "male": 14.6}, "platelets": 255.0, "anc": 4.1, "wbc": 6.8}
LAB_DAYS = (168, 126, 84, 49, 21, 3)  # labs over ~6 months (every 3-6 weeks, last one this week)

# ---------------------------------------------------------------------------------------------------------
# Scenario table
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One synthetic patient: the clinically meaningful facts; the generator fills in realistic detail."""

    id: str
    given: str
    family: str
    gender: str
    age: int
    summary: str
    cancer: str | None = None
    coding: str = "both"  # icd | snomed | both | custom (the real-world function writes the cancer Condition)
    remission: bool = False
    diagnosed_days: int = 150
    drugs: tuple[str, ...] = ()
    drugs_started_days: int = 70
    drugs_stopped_days: int | None = None  # None: still active
    last_infusion_days: int | None = None
    surgery: tuple[str, int] | None = None  # (procedure key, days ago)
    radiotherapy: tuple[int, int | None] | None = None  # (start days ago, end days ago or None = ongoing)
    conditions: tuple[str, ...] = ()
    labs: dict[str, tuple[float, float]] = field(default_factory=dict)  # measure -> (first, latest)
    temperature: float = 36.8
    ecog: int | None = None
    karnofsky: int | None = None
    six_minute_walk: float | None = None
    grip: float | None = None
    tug: float | None = None
    sit_to_stand: int | None = None
    functional_days: int = 14  # how long ago the functional tests were done
    evs: tuple[int, int] | None = None  # (days/week, minutes/day)
    pain: int | None = None
    lvef: float | None = None
    weight: float = 72.0
    height_cm: float = 168.0
    units: tuple[str, ...] = ()  # measures reported in the alternative unit
    inpatient: bool = False
    referral: str | None = None  # pre-existing referral Task status: requested | accepted | in-progress
    extra_tags: tuple[str, ...] = ()
    realworld: str | None = None  # a function in cohort_realworld.REALWORLD adding real-world-coded resources


S = Scenario
SCENARIOS: tuple[Scenario, ...] = (
    S("onc-01", "Margaret", "Okafor", "female", 52,
      "Breast cancer, adjuvant AC chemotherapy cycle 3; neutropenia; inactive",
      cancer="breast-right", coding="icd", drugs=("doxorubicin", "cyclophosphamide"), drugs_started_days=42,
      last_infusion_days=5, labs={"anc": (3.8, 0.9), "wbc": (6.5, 2.4), "hemoglobin": (13.1, 11.4)}, ecog=1,
      six_minute_walk=430, grip=22, tug=8.9, evs=(1, 20), weight=78, height_cm=165, units=("hemoglobin",)),
    S("onc-02", "Aisha", "Rahman", "female", 61,
      "Breast cancer, 3 weeks after mastectomy; lymphoedema of the right arm; weak grip",
      cancer="breast-right", coding="snomed", surgery=("mastectomy", 21), conditions=("lymphoedema",), ecog=1,
      grip=14, six_minute_walk=405, tug=9.5, evs=(3, 30), weight=69, height_cm=160),
    S("onc-03", "Elena", "Petrova", "female", 47,
      "HER2+ breast cancer on paclitaxel + trastuzumab (cardiotoxic); fit and active",
      cancer="breast-left", drugs=("paclitaxel", "trastuzumab"), drugs_started_days=56, last_infusion_days=6,
      ecog=0, six_minute_walk=565, grip=31, tug=6.8, sit_to_stand=17, evs=(5, 40), lvef=(58), weight=61,
      height_cm=170, referral="requested"),
    S("onc-04", "Linda", "Johansson", "female", 58,
      "Breast cancer survivor (3 years), letrozole; osteoporosis; active",
      cancer="breast-left", coding="icd", remission=True, diagnosed_days=1200, drugs=("letrozole",),
      drugs_started_days=1000, surgery=("lumpectomy", 1100), conditions=("osteoporosis",), ecog=0,
      six_minute_walk=540, grip=26, tug=6.4, evs=(5, 32), weight=66, extra_tags=("survivorship",)),
    S("onc-05", "Grace", "Mensah", "female", 66,
      "Metastatic breast cancer with bone metastases (spine, pelvis); letrozole + palbociclib; bone pain",
      cancer="breast-right", coding="snomed", diagnosed_days=900, drugs=("letrozole", "palbociclib"),
      drugs_started_days=120, conditions=("bone-mets",), labs={"anc": (2.9, 1.3), "platelets": (230, 142)},
      ecog=2, tug=13.6, six_minute_walk=290, grip=15, pain=5, evs=(1, 10), weight=64, referral="accepted"),
    S("onc-06", "Robert", "Hughes", "male", 71,
      "Prostate cancer with bone metastases on ADT + enzalutamide; inactive",
      cancer="prostate", coding="icd", diagnosed_days=700, drugs=("leuprolide", "enzalutamide"),
      drugs_started_days=400, conditions=("bone-mets", "hypertension"), ecog=1, grip=29, six_minute_walk=420,
      tug=9.8, evs=(0, 0), weight=92, height_cm=178, units=("weight",)),
    S("onc-07", "David", "Nguyen", "male", 64,
      "Prostate cancer, radiotherapy week 5 of 8; fit",
      cancer="prostate", radiotherapy=(33, None), ecog=0, six_minute_walk=515, grip=41, tug=7.1,
      evs=(4, 30), weight=84, height_cm=180),
    S("onc-08", "Thomas", "Becker", "male", 59,
      "Prostate cancer survivor, 2 years after radical prostatectomy; very active",
      cancer="prostate", coding="snomed", remission=True, diagnosed_days=800, surgery=("prostatectomy", 740),
      ecog=0, six_minute_walk=600, grip=46, tug=6.0, evs=(5, 45), weight=80, height_cm=182,
      extra_tags=("survivorship",)),
    S("onc-09", "Walter", "Kowalski", "male", 78,
      "Prostate cancer on ADT; heart failure (EF 35%), diabetes, falls; weak 6MWT and TUG",
      cancer="prostate", coding="icd", diagnosed_days=500, drugs=("leuprolide", "bisoprolol", "metformin"),
      drugs_started_days=450, conditions=("heart-failure", "diabetes", "falls"), ecog=2, six_minute_walk=250,
      grip=21, tug=15.2, evs=(1, 15), lvef=35, temperature=37.1, weight=88, height_cm=172,
      units=("temperature",)),
    S("onc-10", "Samuel", "Adeyemi", "male", 57,
      "Colon cancer, adjuvant FOLFOX cycle 6; oxaliplatin neuropathy; anaemia",
      cancer="colon", coding="icd", drugs=("oxaliplatin", "fluorouracil"), drugs_started_days=84,
      last_infusion_days=9, surgery=("colectomy", 110), conditions=("neuropathy",),
      labs={"hemoglobin": (13.9, 10.2), "platelets": (240, 131)}, ecog=1, six_minute_walk=455, tug=10.4,
      grip=33, evs=(2, 20), weight=76, height_cm=176),
    S("onc-11", "Sofia", "Marino", "female", 49,
      "Rectal cancer on chemoradiotherapy (capecitabine); platelets falling",
      cancer="rectum", coding="snomed", drugs=("capecitabine",), drugs_started_days=25, radiotherapy=(25, None),
      labs={"platelets": (260, 85), "hemoglobin": (12.8, 11.3)}, ecog=1, six_minute_walk=470, grip=24,
      evs=(3, 25), weight=58, height_cm=163),
    S("onc-12", "Peter", "O'Brien", "male", 68,
      "Colon cancer, 10 days after colectomy; no functional tests yet",
      cancer="colon", surgery=("colectomy", 10), labs={"hemoglobin": (13.2, 11.6)}, ecog=2, evs=(2, 30),
      weight=83, height_cm=175),
    S("onc-13", "Maria", "Fernandes", "female", 63,
      "Colorectal cancer survivor (4 years); persistent neuropathy; balance issues",
      cancer="colon", coding="icd", remission=True, diagnosed_days=1500, drugs=("oxaliplatin", "capecitabine"),
      drugs_started_days=1400, drugs_stopped_days=1250, conditions=("neuropathy",), ecog=0, tug=11.0, grip=20,
      six_minute_walk=480, evs=(3, 30), weight=70, extra_tags=("survivorship",)),
    S("onc-14", "George", "Papadopoulos", "male", 72,
      "Metastatic colorectal cancer (liver) on FOLFIRI + bevacizumab; severe anaemia; ECOG 3",
      cancer="colon", coding="icd", diagnosed_days=420, drugs=("irinotecan", "fluorouracil", "bevacizumab"),
      drugs_started_days=90, last_infusion_days=4, conditions=("liver-mets",),
      labs={"hemoglobin": (11.0, 7.6), "platelets": (210, 118)}, ecog=3, six_minute_walk=180, tug=16.5,
      evs=(0, 0), weight=63, height_cm=174, units=("hemoglobin",), referral="in-progress"),
    S("onc-15", "Henrik", "Larsen", "male", 66,
      "NSCLC on pembrolizumab immunotherapy; COPD; moderately active",
      cancer="nsclc", coding="snomed", diagnosed_days=300, drugs=("pembrolizumab",), drugs_started_days=150,
      last_infusion_days=12, conditions=("copd",), ecog=1, six_minute_walk=385, grip=34, tug=9.2,
      evs=(2, 30), weight=74, height_cm=179),
    S("onc-16", "Yuki", "Tanaka", "female", 59,
      "NSCLC, 6 weeks after lobectomy; weak 6MWT",
      cancer="nsclc", coding="icd", surgery=("lobectomy", 42), ecog=1, six_minute_walk=330, grip=19, tug=10.1,
      evs=(2, 15), weight=55, height_cm=158),
    S("onc-17", "Frank", "Müller", "male", 74,
      "NSCLC on carboplatin + pemetrexed; febrile neutropenia today",
      cancer="nsclc", drugs=("carboplatin", "pemetrexed"), drugs_started_days=50, last_infusion_days=10,
      labs={"anc": (4.4, 0.4), "wbc": (7.1, 1.6), "hemoglobin": (13.5, 10.8)}, temperature=38.6, ecog=2,
      six_minute_walk=340, grip=28, evs=(1, 20), weight=70, units=("temperature",)),
    S("onc-18", "Ruth", "Campbell", "female", 70,
      "Small cell lung cancer on chemoradiation; platelets 28, anaemia; ECOG 3",
      cancer="sclc", coding="icd", drugs=("carboplatin", "etoposide"), drugs_started_days=40,
      last_infusion_days=7, radiotherapy=(20, None), labs={"platelets": (240, 28), "hemoglobin": (12.4, 9.1),
                                                           "anc": (3.9, 1.6)},
      ecog=3, tug=14.8, grip=13, evs=(0, 0), weight=52, height_cm=161),
    S("onc-19", "Ahmed", "Khalil", "male", 62,
      "EGFR+ lung cancer with spinal bone metastases on osimertinib; pain",
      cancer="nsclc", coding="snomed", diagnosed_days=200, drugs=("osimertinib",), drugs_started_days=180,
      conditions=("bone-mets",), ecog=2, pain=6, six_minute_walk=360, grip=30, tug=12.4, evs=(1, 15),
      weight=71, height_cm=175),
    S("onc-20", "Daniel", "Rossi", "male", 55,
      "Diffuse large B-cell lymphoma on R-CHOP cycle 4; neutropenia; vincristine neuropathy",
      cancer="dlbcl", coding="icd", drugs=("rituximab", "cyclophosphamide", "doxorubicin", "vincristine"),
      drugs_started_days=63, last_infusion_days=8, conditions=("neuropathy",),
      labs={"anc": (4.0, 1.1), "hemoglobin": (14.1, 11.8)}, ecog=1, six_minute_walk=445, grip=36, tug=9.1,
      evs=(2, 25), weight=86, height_cm=181),
    S("onc-21", "Chloe", "Dubois", "female", 44,
      "Acute myeloid leukaemia, inpatient induction; platelets 14, ANC 0.2, fever",
      cancer="aml", diagnosed_days=21, drugs=("cytarabine", "daunorubicin"), drugs_started_days=18,
      labs={"platelets": (150, 14), "anc": (1.9, 0.2), "hemoglobin": (11.2, 7.9), "wbc": (3.4, 0.6)},
      temperature=38.9, ecog=3, evs=(0, 0), weight=67, inpatient=True),
    S("onc-22", "Ivan", "Horvat", "male", 67,
      "Multiple myeloma on bortezomib; platelets 62; osteoporosis",
      cancer="myeloma", coding="icd", diagnosed_days=260, drugs=("bortezomib",), drugs_started_days=200,
      conditions=("osteoporosis",), labs={"platelets": (190, 62), "hemoglobin": (11.9, 10.6)}, ecog=2,
      six_minute_walk=350, grip=25, tug=11.8, evs=(1, 20), weight=79),
    S("onc-23", "Arthur", "Bennett", "male", 69,
      "Chronic lymphocytic leukaemia, watch and wait; active",
      cancer="cll", diagnosed_days=700, ecog=0, six_minute_walk=520, grip=40, tug=7.4,
      evs=(5, 40), weight=82, extra_tags=("watch-and-wait",)),
    S("onc-24", "Naomi", "Clarke", "female", 34,
      "Hodgkin lymphoma survivor (5 years after ABVD + mediastinal radiotherapy); very active",
      cancer="hodgkin", coding="icd", remission=True, diagnosed_days=2000, drugs=("doxorubicin",),
      drugs_started_days=1950, drugs_stopped_days=1800, radiotherapy=(1780, 1750), ecog=0, karnofsky=100,
      six_minute_walk=640, grip=33, tug=5.6, evs=(6, 50), weight=60, height_cm=172,
      extra_tags=("survivorship",)),
    S("onc-25", "Olivia", "Schmidt", "female", 39,
      "Breast cancer after lumpectomy, radiotherapy week 3; fatigue; strong grip",
      cancer="breast-left", coding="icd", surgery=("lumpectomy", 60), radiotherapy=(16, None), ecog=0,
      six_minute_walk=530, grip=34, tug=6.9, evs=(3, 30), weight=63, height_cm=169),
    S("onc-26", "Harold", "Jenkins", "male", 76,
      "Metastatic pancreatic cancer, ECOG 4, mostly bed-bound",
      cancer="pancreas", coding="icd", diagnosed_days=160, drugs=("gemcitabine",), drugs_started_days=140,
      drugs_stopped_days=20, conditions=("liver-mets",), labs={"hemoglobin": (11.8, 9.4)}, ecog=4, karnofsky=30,
      pain=7, evs=(0, 0), weight=54, height_cm=176, units=("weight",)),
    S("onc-27", "Isabel", "García", "female", 56,
      "Melanoma on adjuvant nivolumab; strong and active",
      cancer="melanoma", coding="icd", drugs=("nivolumab",), drugs_started_days=120, last_infusion_days=11,
      ecog=0, six_minute_walk=585, grip=35, tug=6.2, sit_to_stand=19, evs=(5, 42), weight=62),
    S("onc-28", "Fatima", "Benali", "female", 62,
      "Ovarian cancer on carboplatin + paclitaxel; neuropathy; anaemia",
      cancer="ovary", drugs=("carboplatin", "paclitaxel"), drugs_started_days=70, last_infusion_days=14,
      conditions=("neuropathy",), labs={"hemoglobin": (12.6, 10.5), "platelets": (280, 160)}, ecog=1,
      six_minute_walk=410, grip=20, tug=11.2, evs=(2, 20), weight=75, units=("weight",)),
    S("onc-29", "Brian", "Walsh", "male", 58,
      "Tonsil cancer, 2 months after chemoradiation; weight loss",
      cancer="head-neck", coding="icd", drugs=("carboplatin",), drugs_started_days=110, drugs_stopped_days=60,
      radiotherapy=(110, 62), ecog=1, six_minute_walk=440, grip=31, tug=8.4, evs=(2, 30), weight=68,
      height_cm=183),
    S("onc-30", "Lucas", "Moreau", "male", 29,
      "Testicular cancer survivor after orchidectomy; very active",
      cancer="testis", remission=True, diagnosed_days=900, surgery=("orchiectomy", 880),
      ecog=0, six_minute_walk=660, grip=52, tug=5.2, sit_to_stand=24, evs=(6, 60), weight=77, height_cm=185,
      extra_tags=("survivorship",)),
    # --- coded the way real EHRs code them (cohort_realworld.py): the rules must read these too
    S("onc-31", "Nkechi", "Eze", "female", 48,
      "Breast cancer on AC chemotherapy ordered as RxNorm clinical drugs; tympanic temperature 101.5 °F this morning",
      cancer="breast-left", coding="icd", ecog=1, six_minute_walk=470, grip=24, tug=8.0, evs=(2, 30), weight=70,
      realworld="ac_clinical_drugs_tympanic_fever", extra_tags=("real-world-coding", "rxnorm-clinical-drug")),
    S("onc-32", "Hamza", "Qureshi", "male", 61,
      "Sigmoid cancer coded in WHO ICD-10; partial colectomy 10 days ago coded in CPT only",
      cancer="colon", coding="custom", ecog=1, evs=(2, 20), weight=81, height_cm=177,
      realworld="colectomy_cpt_who_icd10", extra_tags=("real-world-coding", "who-icd10", "cpt", "after-surgery")),
    S("onc-33", "Wei", "Zhang", "female", 38,
      "AML, 60 days after allogeneic stem-cell transplant; tunnelled central line; platelets 14 by manual count",
      cancer="aml", coding="snomed", diagnosed_days=200, ecog=2, evs=(1, 15), weight=58, height_cm=164,
      realworld="hsct_line_manual_platelets", extra_tags=("real-world-coding", "stem-cell-transplant")),
    S("onc-34", "Patrick", "Doyle", "male", 70,
      "Prostate cancer survivor coded as a personal history (Z85.46); mitral valve prolapse, bundle-branch block; "
      "active", cancer="prostate", coding="custom", remission=True, diagnosed_days=1500, ecog=0, six_minute_walk=540,
      grip=38, tug=7.0, evs=(5, 35), weight=79, height_cm=176, realworld="survivor_history_incidental_heart",
      extra_tags=("real-world-coding", "survivorship", "history-of-cancer")),
    S("onc-35", "Leila", "Haddad", "female", 57,
      "Lung cancer; pulmonary embolism 3 weeks ago on apixaban (RxNorm clinical drug); SpO2 93%",
      cancer="nsclc", coding="snomed", diagnosed_days=120, ecog=1, six_minute_walk=390, grip=22, evs=(2, 20),
      weight=66, realworld="pulmonary_embolism_on_apixaban", extra_tags=("real-world-coding", "vte")),
    S("onc-36", "Mateo", "Silva", "male", 45,
      "Melanoma with a brain metastasis (mCODE bodySite), epilepsy; pembrolizumab given as an RxNorm clinical drug",
      cancer="melanoma", coding="icd", diagnosed_days=400, ecog=1, six_minute_walk=520, grip=41, evs=(3, 30),
      weight=83, height_cm=181, realworld="brain_metastasis_mcode_seizure",
      extra_tags=("real-world-coding", "brain-metastases", "mcode-bodysite")),
    S("onc-37", "Ella", "Novak", "female", 16,
      "Adolescent with osteosarcoma (WHO ICD-10) on methotrexate (ATC only); implanted port",
      cancer="bone-sarcoma", coding="custom", diagnosed_days=120, ecog=1, evs=(3, 40), weight=52, height_cm=163,
      realworld="adolescent_osteosarcoma_port", extra_tags=("real-world-coding", "paediatric", "central-line")),
    S("onc-38", "Ruth", "Adler", "female", 66,
      "Rectal cancer with an ileostomy; today's haemoglobin reported as 'see comment'; ondansetron for nausea",
      cancer="rectum", coding="both", diagnosed_days=220, ecog=1, six_minute_walk=430, grip=19, evs=(2, 25),
      weight=61, realworld="ileostomy_unreadable_haemoglobin",
      extra_tags=("real-world-coding", "ostomy", "unreadable-result")),
    S("onc-39", "Grace", "Kim", "female", 52,
      "Breast cancer with axillary node involvement (regional, C77.3); a capecitabine order still 'active' after "
      "2 years", cancer="breast-right", coding="icd", remission=True, diagnosed_days=900, ecog=0,
      six_minute_walk=560, grip=27, tug=6.6, evs=(4, 35), weight=64, realworld="regional_nodes_stale_order",
      extra_tags=("real-world-coding", "regional-nodes", "stale-order")),
    S("onc-40", "Oskar", "Lind", "male", 69,
      "Myeloma on lenalidomide (RxNorm clinical drug); calcium 12.8 mg/dL with low albumin; pathological vertebral "
      "fracture", cancer="myeloma", coding="icd", diagnosed_days=300, ecog=2, six_minute_walk=330, grip=29,
      evs=(1, 20), weight=77, realworld="myeloma_calcium_fracture",
      extra_tags=("real-world-coding", "hypercalcaemia", "pathological-fracture")),
    S("non-01", "Michael", "Evans", "male", 63,
      "No cancer: hypertension and knee osteoarthritis (non-oncology control)",
      conditions=("hypertension", "knee-oa"), six_minute_walk=470, evs=(2, 30), weight=95, height_cm=177),
    S("non-02", "Patricia", "Lopez", "female", 55,
      "No cancer: type 2 diabetes (non-oncology control)",
      conditions=("diabetes",), drugs=("metformin",), drugs_started_days=900, evs=(1, 30), weight=88,
      height_cm=162),
    S("non-03", "Emma", "Wilson", "female", 41,
      "No cancer: healthy adult at a routine visit (non-oncology control)",
      evs=(4, 40), weight=64, height_cm=167),
)

# ---------------------------------------------------------------------------------------------------------
# Shared resources
# ---------------------------------------------------------------------------------------------------------

PRACTITIONERS = (
    ("sandbox-clinician", "Alex", "Morgan", "Dr", "Medical oncologist", "+1-555-0100", "a.morgan@riverside.example"),
    ("oncology-nurse", "Sam", "Lee", None, "Oncology nurse specialist", "+1-555-0101", "s.lee@riverside.example"),
    ("breast-surgeon", "Priya", "Nair", "Dr", "Breast surgeon", "+1-555-0102", "p.nair@riverside.example"),
    ("radiation-oncologist", "Tomás", "Ruiz", "Dr", "Radiation oncologist", "+1-555-0103",
     "t.ruiz@riverside.example"),
    ("haematologist", "Ingrid", "Solberg", "Dr", "Haematologist", "+1-555-0104", "i.solberg@riverside.example"),
    ("general-practitioner", "Hannah", "Weber", "Dr", "General practitioner", "+1-555-0105",
     "h.weber@riverside.example"),
    ("exercise-physiologist", "Jordan", "Blake", None, "Clinical exercise physiologist", "+1-555-0200",
     "j.blake@exercise-oncology.example"),
)

ORGANIZATIONS = (
    ("sandbox-hospital", "Riverside Cancer Centre", "prov", "+1-555-0199", "info@riverside.example",
     "1 River Road"),
    ("exercise-oncology-service", "Riverside Exercise Oncology Service", "prov", "+1-555-0210",
     "referrals@exercise-oncology.example", "3 River Road, Building C"),
    ("community-exercise-programme", "Moving Forward Community Exercise Programme", "cg", "+1-555-0300",
     "hello@movingforward.example", "12 Park Lane Leisure Centre"),
)

# Pre-existing referrals (by the Task status they have reached), so the exercise-service inbox is not empty.
REFERRALS: dict[str, dict[str, Any]] = {
    "requested": {
        "days": 2, "setting": ("supervised", "Clinically supervised"),
        "precautions": [("cardiac", "Cardiotoxic therapy (trastuzumab): medical clearance and a supervised start; "
                                    "stop for chest pain or breathlessness out of proportion."),
                        ("active-treatment", "On chemotherapy: expect lower tolerance in the days after "
                                             "infusion; reduce volume rather than stopping.")],
        "components": {"aerobic": (3, 30, "moderate (RPE 12-13 on Borg 6-20)", "brisk walking, cycling"),
                       "resistance": (2, 20, "moderate, 2 sets of 10-12 with bands", "major muscle groups")},
        "notes": ["Medical clearance is required before starting."],
        "clinician_notes": ["Patient prefers early-morning sessions."],
        "business": "Awaiting review",
    },
    "accepted": {
        "days": 6, "setting": ("supervised", "Clinically supervised"),
        "precautions": [("bone-metastases", "Bone metastases (spine, pelvis): avoid high-impact and loaded spinal "
                                            "flexion/rotation; supervised resistance work."),
                        ("neutropenia", "ANC 1.3 x10^9/L: avoid public pools and crowded gyms; check "
                                        "temperature if unwell.")],
        "components": {"aerobic": (3, 15, "light to moderate (RPE 11-12)", "walking, recumbent cycling"),
                       "balance": (3, 10, "light", "supported balance exercises")},
        "notes": ["Pain 5/10 in the lower back: review analgesia before sessions."],
        "business": "Accepted, booking an assessment",
    },
    "in-progress": {
        "days": 20, "setting": ("supervised", "Clinically supervised"),
        "precautions": [("anemia", "Haemoglobin 7.6 g/dL: short, symptom-limited sessions only."),
                        ("low-performance-status", "ECOG 3: clinically supervised rehabilitation, daily-activity "
                                                   "goals.")],
        "components": {"aerobic": (3, 10, "light (RPE 9-11)", "walking in short bouts"),
                       "flexibility": (5, 10, "light", "gentle stretching")},
        "notes": ["Goal: independent walking to the end of the street and back."],
        "business": "Programme under way",
    },
}

# ---------------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------------


def _dt(days_ago: float, hour: int = 9, minute: int = 0) -> str:
    """A dateTime `days_ago` before ANCHOR at a fixed clock time (UTC), ISO 8601 with Z."""
    t = (ANCHOR - timedelta(days=days_ago)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(days_ago: float) -> str:
    return (ANCHOR - timedelta(days=days_ago)).date().isoformat()


def _ref(type_: str, id_: str, display: str | None = None) -> dict[str, str]:
    r = {"reference": f"{type_}/{id_}"}
    if display:
        r["display"] = display
    return r


def _cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        c["text"] = text
    return c


def _condition_code(entry: tuple[str, str, str, str, str], coding: str) -> dict[str, Any]:
    sct, sct_display, icd, icd_display, _ = entry
    codings = []
    if coding in ("snomed", "both"):
        codings.append({"system": SNOMED, "code": sct, "display": sct_display})
    if coding in ("icd", "both"):
        codings.append({"system": ICD10CM, "code": icd, "display": icd_display})
    return {"coding": codings, "text": sct_display}


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def _round(measure: str, value: float) -> float | int:
    if measure in ("platelets", "six-minute-walk", "evs-days", "evs-minutes-day", "evs-minutes-week", "pain",
                   "sit-to-stand", "heart-rate", "resting-heart-rate", "lvef"):
        return int(round(value))
    if measure in ("anc", "wbc", "hemoglobin", "temperature", "bmi", "tug", "grip-right", "weight"):
        return round(value, 1)
    return round(value, 2)


STREETS = ("Oak", "Elm", "Mill", "Station", "Church", "High")


class _PatientBuilder:
    """Builds one patient's resources; all randomness comes from a Random seeded with (SEED, patient id)."""

    def __init__(self, s: Scenario) -> None:
        self.s = s
        self.rng = random.Random(f"{SEED}:{s.id}")
        self.resources: list[dict[str, Any]] = []
        self.counter: dict[str, int] = {}
        self.patient_ref = _ref("Patient", s.id, f"{s.given} {s.family}")
        self.cancer_ref: dict[str, str] | None = None
        self.obs_ids: dict[str, list[str]] = {}

    def _id(self, kind: str) -> str:
        self.counter[kind] = self.counter.get(kind, 0) + 1
        return f"{self.s.id}-{kind}-{self.counter[kind]}"

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources.append(resource)
        return resource

    # -- resources -----------------------------------------------------------------------------------------

    def patient(self) -> None:
        s = self.s
        birth = (ANCHOR - timedelta(days=int(s.age * 365.25) + self.rng.randint(20, 300))).date()
        self.add({
            "resourceType": "Patient", "id": s.id,
            "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
            "identifier": [{"system": MRN_SYSTEM, "value": f"MRN-{s.id.upper()}"}],
            "active": True,
            "name": [{"use": "official", "family": s.family, "given": [s.given]}],
            "telecom": [{"system": "phone", "value": f"+1-555-{self.rng.randint(1000, 9999)}", "use": "mobile"}],
            "gender": s.gender,
            "birthDate": birth.isoformat(),
            "address": [{"line": [f"{self.rng.randint(2, 240)} {self.rng.choice(STREETS)} Street"],
                         "city": "Riverside", "postalCode": f"{self.rng.randint(10000, 99999)}", "country": "US"}],
            "communication": [{"language": _cc("urn:ietf:bcp:47", "en", "English"), "preferred": True}],
            "generalPractitioner": [_ref("Practitioner", "general-practitioner", "Dr Hannah Weber")],
            "managingOrganization": _ref("Organization", "sandbox-hospital", "Riverside Cancer Centre"),
        })

    def encounter(self) -> None:
        s = self.s
        cls = ("IMP", "inpatient encounter") if s.inpatient else ("AMB", "ambulatory")
        enc_type = ("Oncology clinic review" if s.cancer else "General medical review")
        self.add({
            "resourceType": "Encounter", "id": f"enc-{s.id}",
            "status": "in-progress",
            "class": {"system": ACT_CODE, "code": cls[0], "display": cls[1]},
            "type": [_cc(SNOMED, "185389009", "Follow-up visit", enc_type)],
            "subject": self.patient_ref,
            "participant": [{"individual": _ref("Practitioner", "sandbox-clinician", "Dr Alex Morgan")}],
            "period": {"start": _dt(0, hour=11, minute=30)},
            "serviceProvider": _ref("Organization", "sandbox-hospital", "Riverside Cancer Centre"),
        })

    def conditions(self) -> None:
        s = self.s
        if s.cancer and s.coding != "custom":
            cid = self._id("cancer")
            entry = CANCERS[s.cancer]
            status = "remission" if s.remission else "active"
            self.add({
                "resourceType": "Condition", "id": cid,
                "meta": {"profile": [f"{MCODE}/mcode-primary-cancer-condition"]},
                "clinicalStatus": _cc(COND_CLINICAL, status, status.capitalize()),
                "verificationStatus": _cc(COND_VER, "confirmed", "Confirmed"),
                "category": [_cc(COND_CAT, "problem-list-item", "Problem List Item")],
                "code": _condition_code(entry, s.coding),
                "subject": self.patient_ref,
                "onsetDateTime": _dt(s.diagnosed_days, hour=10),
                "recordedDate": _dt(s.diagnosed_days - 2, hour=14),
                "asserter": _ref("Practitioner", "sandbox-clinician"),
            })
            self.cancer_ref = _ref("Condition", cid, entry[1])
        for key in s.conditions:
            entry = CONDITIONS[key]
            is_mets = key.endswith("-mets")
            onset = min(s.diagnosed_days, 60 + self.rng.randint(0, 200)) if is_mets else 200 + self.rng.randint(0, 900)
            # ICD-10 I97.2 only fits lymphoedema after mastectomy; others get the generic code
            code = _condition_code(entry, s.coding)
            resource = {
                "resourceType": "Condition", "id": self._id("condition"),
                "clinicalStatus": _cc(COND_CLINICAL, "active", "Active"),
                "verificationStatus": _cc(COND_VER, "confirmed", "Confirmed"),
                "category": [_cc(COND_CAT, "problem-list-item", "Problem List Item")],
                "code": code,
                "subject": self.patient_ref,
                "onsetDateTime": _dt(onset, hour=10),
            }
            if is_mets:
                resource["meta"] = {"profile": [f"{MCODE}/mcode-secondary-cancer-condition"]}
                if self.cancer_ref:
                    resource["extension"] = [{
                        "url": "http://hl7.org/fhir/StructureDefinition/condition-related",
                        "valueReference": self.cancer_ref}]
            self.add(resource)

    def treatments(self) -> None:
        s = self.s
        haem = s.cancer is not None and CANCERS[s.cancer][4] == "haematological"
        prescriber = "haematologist" if haem else "sandbox-clinician"
        for key in s.drugs:
            rx, name, atc, kind, _ = DRUGS[key]
            active = s.drugs_stopped_days is None
            mr: dict[str, Any] = {
                "resourceType": "MedicationRequest", "id": self._id("medreq"),
                "status": "active" if active else "completed",
                "intent": "order",
                "medicationCodeableConcept": {"coding": [
                    {"system": RXNORM, "code": rx, "display": name},
                    {"system": ATC, "code": atc, "display": name}], "text": name},
                "subject": self.patient_ref,
                "authoredOn": _dt(s.drugs_started_days, hour=10),
                "requester": _ref("Practitioner", prescriber),
                "dosageInstruction": [{"text": f"{name} as per protocol"}],
            }
            if kind != "other" and self.cancer_ref:
                mr["meta"] = {"profile": [f"{MCODE}/mcode-cancer-related-medication-request"]}
                mr["reasonReference"] = [self.cancer_ref]
                mr["category"] = [_cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                                      "outpatient", "Outpatient")]
            stop = s.drugs_stopped_days
            mr["dispenseRequest"] = {"validityPeriod": {"start": _date(s.drugs_started_days),
                                                        **({"end": _date(stop)} if stop is not None else {})}}
            self.add(mr)
        if s.last_infusion_days is not None and self.cancer_ref:
            # Each infusion is coded by what was infused: a checkpoint inhibitor alone is immunotherapy,
            # not chemotherapy (the rules treat the two differently).
            kinds = {DRUGS[d][3] for d in s.drugs}
            regimen = "chemotherapy" if "chemotherapy" in kinds or "immunotherapy" not in kinds else "immunotherapy"
            cycle_days = s.last_infusion_days
            while cycle_days <= s.drugs_started_days:
                self.add({
                    "resourceType": "Procedure", "id": self._id("chemo" if regimen == "chemotherapy" else "immuno"),
                    "status": "completed",
                    "code": _cc(SNOMED, *PROCEDURES[regimen][:2]),
                    "subject": self.patient_ref,
                    "performedDateTime": _dt(cycle_days, hour=9, minute=30),
                    "reasonReference": [self.cancer_ref],
                })
                cycle_days += 21
        if s.surgery:
            key, days = s.surgery
            code, display, _ = PROCEDURES[key]
            surgeon = "breast-surgeon" if key in ("mastectomy", "lumpectomy") else "sandbox-clinician"
            self.add({
                "resourceType": "Procedure", "id": self._id("surgery"),
                "meta": {"profile": [f"{MCODE}/mcode-cancer-related-surgical-procedure"]},
                "status": "completed",
                "category": _cc(SNOMED, "387713003", "Surgical procedure"),
                "code": _cc(SNOMED, code, display),
                "subject": self.patient_ref,
                "performedDateTime": _dt(days, hour=8),
                "performer": [{"actor": _ref("Practitioner", surgeon)}],
                **({"reasonReference": [self.cancer_ref]} if self.cancer_ref else {}),
            })
        if s.radiotherapy:
            start, end = s.radiotherapy
            period = {"start": _dt(start, hour=8)}
            if end is not None:
                period["end"] = _dt(end, hour=8)
            self.add({
                "resourceType": "Procedure", "id": self._id("radiotherapy"),
                "meta": {"profile": [f"{MCODE}/mcode-radiotherapy-course-summary"]},
                "status": "in-progress" if end is None else "completed",
                "category": _cc(SNOMED, "108290001", "Radiation oncology AND/OR radiotherapy"),
                "code": _cc(SNOMED, *PROCEDURES["radiotherapy"][:2]),
                "subject": self.patient_ref,
                "performedPeriod": period,
                "performer": [{"actor": _ref("Practitioner", "radiation-oncologist")}],
                **({"reasonReference": [self.cancer_ref]} if self.cancer_ref else {}),
            })

    def _obs(self, measure: str, value: float, days_ago: float, hour: int = 8) -> dict[str, Any]:
        loinc, display, unit, alt_unit, factor, category = MEASURES[measure]
        if alt_unit and measure in self.s.units:
            if measure == "temperature":
                value, unit = value * 9 / 5 + 32, alt_unit
            else:
                value, unit = value * factor, alt_unit
        value = _round(measure, value)
        categories = [_cc(OBS_CAT, category, category.replace("-", " ").capitalize())]
        if category == "activity":
            categories.append(_cc(PA_TEMPORARY_CODES, "PhysicalActivity", "Physical Activity"))
        obs: dict[str, Any] = {
            "resourceType": "Observation", "id": self._id(measure),
            "status": "final",
            "category": categories,
            "code": _cc(LOINC, loinc, display),
            "subject": self.patient_ref,
            "effectiveDateTime": _dt(days_ago, hour=hour, minute=self.rng.choice((0, 10, 20, 35, 45))),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        }
        if category == "activity":
            obs["meta"] = {"profile": [pa_sd_url({"evs-days": "pa-observation-evs-days-per-week",
                                                  "evs-minutes-day": "pa-observation-evs-minutes-per-day",
                                                  "evs-minutes-week": "pa-observation-evs-minutes-per-week"}[measure])]}
        self.obs_ids.setdefault(measure, []).append(obs["id"])
        return self.add(obs)

    def labs(self) -> None:
        s = self.s
        if not s.cancer and not s.labs:
            days = LAB_DAYS[-3:]
        else:
            days = LAB_DAYS
        for measure in ("hemoglobin", "platelets", "anc", "wbc"):
            normal = NORMAL_LABS[measure]
            base = normal[s.gender] if isinstance(normal, dict) else normal
            first, last = s.labs.get(measure, (base, base))
            n = len(days)
            for i, d in enumerate(days):
                frac = i / (n - 1)
                value = first + (last - first) * (frac ** 1.5)
                if i < n - 1:
                    value *= 1 + self.rng.uniform(-0.04, 0.04)
                else:
                    value = last
                self._obs(measure, value, d, hour=7)

    def vitals(self) -> None:
        s = self.s
        for i, d in enumerate((90, 21, 0)):
            weight = s.weight * (1 + (2 - i) * self.rng.uniform(-0.01, 0.015))
            if i == 2:
                weight = s.weight
            self._obs("weight", weight, d, hour=10)
            bmi = weight / (s.height_cm / 100) ** 2
            self._obs("bmi", bmi, d, hour=10)
            temp = s.temperature if i == 2 else 36.6 + self.rng.uniform(-0.3, 0.3)
            self._obs("temperature", temp, d, hour=10)
            self._obs("heart-rate", 62 + self.rng.randint(0, 24) + (12 if s.temperature >= 38 and i == 2 else 0),
                      d, hour=10)
            sys_bp = 118 + self.rng.randint(0, 22) + (10 if "hypertension" in s.conditions else 0)
            dia_bp = 70 + self.rng.randint(0, 14)
            self.add({
                "resourceType": "Observation", "id": self._id("bp"),
                "status": "final",
                "category": [_cc(OBS_CAT, "vital-signs", "Vital Signs")],
                "code": _cc(LOINC, BP[0], BP[1]),
                "subject": self.patient_ref,
                "effectiveDateTime": _dt(d, hour=10, minute=5),
                "component": [
                    {"code": _cc(LOINC, BP[2], "Systolic blood pressure"),
                     "valueQuantity": {"value": sys_bp, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
                    {"code": _cc(LOINC, BP[3], "Diastolic blood pressure"),
                     "valueQuantity": {"value": dia_bp, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
                ],
            })
        self._obs("resting-heart-rate", 58 + self.rng.randint(0, 20), 21, hour=10)

    def function(self) -> None:
        s = self.s
        d = s.functional_days
        older = d + 84
        for measure, value in (("six-minute-walk", s.six_minute_walk), ("grip-right", s.grip), ("tug", s.tug),
                               ("sit-to-stand", s.sit_to_stand)):
            if value is None:
                continue
            better = -1 if measure == "tug" else 1
            self._obs(measure, value * (1 + better * self.rng.uniform(0.03, 0.12)), older, hour=14)
            self._obs(measure, value, d, hour=14)
        if s.ecog is not None:
            for days_ago, value in ((90, max(0, s.ecog - (1 if s.ecog >= 2 else 0))), (1, s.ecog)):
                self.add({
                    "resourceType": "Observation", "id": self._id("ecog"),
                    "meta": {"profile": [f"{MCODE}/mcode-ecog-performance-status"]},
                    "status": "final",
                    "category": [_cc(OBS_CAT, "survey", "Survey")],
                    "code": _cc(LOINC, *ECOG_LOINC),
                    "subject": self.patient_ref,
                    "effectiveDateTime": _dt(days_ago, hour=11),
                    "valueInteger": value,
                })
                self.obs_ids.setdefault("ecog", []).append(self.resources[-1]["id"])
        if s.karnofsky is not None:
            self.add({
                "resourceType": "Observation", "id": self._id("karnofsky"),
                "meta": {"profile": [f"{MCODE}/mcode-karnofsky-performance-status"]},
                "status": "final",
                "category": [_cc(OBS_CAT, "survey", "Survey")],
                "code": _cc(LOINC, *KARNOFSKY_LOINC),
                "subject": self.patient_ref,
                "effectiveDateTime": _dt(1, hour=11, minute=5),
                "valueInteger": s.karnofsky,
            })
        if s.pain is not None:
            self._obs("pain", max(0, s.pain - 2), 30, hour=11)
            self._obs("pain", s.pain, 1, hour=11)
        if s.lvef is not None:
            self._obs("lvef", s.lvef + 6, 180, hour=13)
            self._obs("lvef", s.lvef, 30, hour=13)
        if s.evs is not None:
            days, minutes = s.evs
            for when in (120, 2):
                self._obs("evs-days", days, when, hour=11)
                self._obs("evs-minutes-day", minutes, when, hour=11)
                self._obs("evs-minutes-week", days * minutes, when, hour=11)

    def referral(self) -> None:
        """A referral signed a few days ago, shaped like the ones the product writes (our referral and
        prescription profiles on top of the PA IG ones): referral ServiceRequest + component prescriptions
        (FITT in occurrenceTiming) + fulfil Task, so the exercise-service inbox has work at first start."""
        s = self.s
        if not s.referral or not self.cancer_ref:
            return
        plan = REFERRALS[s.referral]
        days = plan["days"]
        key = f"sandbox-{s.id}"
        authored = _dt(days, hour=12)
        period = {"start": _date(days), "end": _date(days - 84)}
        clinician = _ref("Practitioner", "sandbox-clinician", "Dr Alex Morgan")
        service = _ref("Organization", "exercise-oncology-service", "Riverside Exercise Oncology Service")
        categories = [_cc(PA_TEMPORARY_CODES, "PhysicalActivity", "Physical Activity"),
                      _cc(SNOMED, "91251008", "Physical therapy procedure")]
        precautions = [{"coding": [{"system": CS_PRECAUTION, "code": code}], "text": text}
                       for code, text in plan["precautions"]]
        observations = [_ref("Observation", i) for m in ("evs-minutes-week", "six-minute-walk", "ecog", "anc",
                                                          "hemoglobin") for i in self.obs_ids.get(m, [])[-1:]]
        stop = "\n".join(["Stop and seek advice:", "- Stop and rest if you feel dizzy or faint.",
                           "- Stop and call for help for chest pain or pressure.",
                           "- Stop and contact your care team for new bone pain.",
                           "- Do not exercise with a fever (38 °C or more)."])
        rx_refs = []
        for kind, (freq, minutes, intensity, what) in plan["components"].items():
            rx_id = f"{s.id}-rx-{kind}"
            rx_refs.append(_ref("ServiceRequest", rx_id))
            self.add({
                "resourceType": "ServiceRequest", "id": rx_id,
                "meta": {"profile": [sd_url("onco-exercise-prescription"), pa_sd_url("pa-servicerequest")]},
                "identifier": [{"system": ID_PRESCRIPTION, "value": f"{key}-rx-{kind}"}],
                "status": "active", "intent": "order", "category": categories, "priority": "routine",
                "code": _cc(SNOMED, "229065009", "Exercise therapy", f"{kind.capitalize()} exercise"),
                "orderDetail": [{"text": f"Intensity: {intensity}"}] + precautions,
                "subject": self.patient_ref,
                "occurrenceTiming": {"repeat": {"boundsPeriod": period, "frequency": freq, "period": 1,
                                                "periodUnit": "wk", "duration": minutes, "durationUnit": "min"}},
                "authoredOn": authored, "requester": clinician, "performer": [self.patient_ref],
                "reasonReference": [self.cancer_ref],
                "patientInstruction": f"{kind.capitalize()}: {freq}x/week, {minutes} min, {intensity}: {what}",
                "encounter": _ref("Encounter", f"enc-{s.id}"),
                "supportingInfo": observations,
            })
        setting_code, setting_label = plan["setting"]
        # as the product writes them: every note authored and timed (PA IG), the clinician's own words prefixed
        texts = [f"Clinician note: {n}" for n in plan.get("clinician_notes", [])]
        texts += [f"Requested setting: {setting_label}."] + plan["notes"]
        notes = [{"authorReference": clinician, "time": authored, "text": n} for n in texts]
        self.add({
            "resourceType": "ServiceRequest", "id": f"{s.id}-referral",
            "meta": {"profile": [sd_url("onco-exercise-referral"), pa_sd_url("pa-servicerequest")]},
            "identifier": [{"system": ID_PRESCRIPTION, "value": f"{key}-referral"}],
            "status": "active", "intent": "order", "category": categories, "priority": "routine",
            "code": _cc(SNOMED, "390893007", "Referral to physical activity program",
                        "Referral to exercise oncology service"),
            "orderDetail": [{"coding": [{"system": CS_SETTING, "code": setting_code, "display": setting_label}],
                             "text": f"Setting: {setting_label}"}] + precautions,
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", f"enc-{s.id}"),
            "occurrencePeriod": period,
            "authoredOn": authored, "requester": clinician, "performer": [service],
            "reasonReference": [self.cancer_ref],
            "note": notes,
            "patientInstruction": stop,
            "supportingInfo": rx_refs + observations,
        })
        status = s.referral
        task: dict[str, Any] = {
            "resourceType": "Task", "id": f"{s.id}-referral-task",
            "meta": {"profile": [sd_url("onco-exercise-task"), pa_sd_url("pa-task-for-referral-management")]},
            "identifier": [{"system": ID_PRESCRIPTION, "value": f"{key}-task"}],
            "basedOn": [_ref("ServiceRequest", f"{s.id}-referral")],
            "status": status, "intent": "order", "priority": "routine",
            "code": _cc(TASK_CODE, "fulfill", "Fulfill the focal request"),
            "description": "Please contact the patient and deliver the exercise oncology referral.",
            "focus": _ref("ServiceRequest", f"{s.id}-referral"),
            "for": self.patient_ref,
            "encounter": _ref("Encounter", f"enc-{s.id}"),
            "authoredOn": authored,
            "lastModified": authored if status == "requested" else _dt(max(days - 2, 1), hour=15),
            "requester": clinician,
            "owner": service,
        }
        if status != "requested":
            task["businessStatus"] = {"text": plan["business"]}
        if status == "in-progress":
            task["executionPeriod"] = {"start": _dt(days - 3, hour=10)}
        self.add(task)

    # -- for the real-world coding variants (cohort_realworld.py) -----------------------------------------------

    def new_id(self, kind: str) -> str:
        return self._id(kind)

    @staticmethod
    def when(days_ago: float, hour: int = 9, minute: int = 0) -> str:
        return _dt(days_ago, hour, minute)

    def real_world(self) -> None:
        if self.s.realworld:
            REALWORLD[self.s.realworld](self)

    def build(self) -> list[dict[str, Any]]:
        self.patient()
        self.encounter()
        self.conditions()
        self.real_world()
        self.treatments()
        self.labs()
        self.vitals()
        self.function()
        self.referral()
        return self.resources


def scenario_tags(s: Scenario) -> list[str]:
    """Situations this patient covers, derived from its facts with the thresholds the rules care about."""
    tags: list[str] = list(s.extra_tags)
    if s.cancer is None:
        tags.append("non-oncology")
    else:
        tags.append(CANCERS[s.cancer][4])
        tags.append("remission" if s.remission else "active-cancer")
    kinds = {DRUGS[d][3] for d in s.drugs if s.drugs_stopped_days is None}
    tags += sorted(k for k in kinds if k != "other")
    if s.radiotherapy and s.radiotherapy[1] is None:
        tags.append("radiotherapy")
    if s.surgery and s.surgery[1] <= 90:
        tags.append("after-surgery")
    if any(DRUGS[d][4] for d in s.drugs):
        tags.append("cardiotoxic-therapy")
    tags += [CONDITIONS[c][4] for c in s.conditions]
    latest = {m: v[1] for m, v in s.labs.items()}
    if latest.get("platelets", 999) < 100:
        tags.append("low-platelets")
    if latest.get("hemoglobin", 99) < 11:
        tags.append("anaemia")
    if latest.get("anc", 99) < 1.5:
        tags.append("neutropenia")
    if s.temperature >= 38.0:
        tags.append("fever")
    if s.ecog is not None:
        tags.append(f"ecog-{s.ecog}")
    if s.six_minute_walk is not None:
        tags.append("6mwt-weak" if s.six_minute_walk < 400 else "6mwt-strong" if s.six_minute_walk >= 500 else "6mwt")
    if s.grip is not None:
        weak, strong = (16, 30) if s.gender == "female" else (27, 40)
        tags.append("grip-weak" if s.grip < weak else "grip-strong" if s.grip >= strong else "grip")
    if s.tug is not None:
        tags.append("tug-weak" if s.tug >= 12 else "tug-strong" if s.tug < 8 else "tug")
    if s.evs is not None:
        minutes = s.evs[0] * s.evs[1]
        tags.append("evs-inactive" if minutes < 60 else "evs-active" if minutes >= 150 else "evs-insufficient")
    if s.units:
        tags.append("other-units")
    if s.referral:
        tags.append(f"referral-{s.referral}")
    return sorted(set(tags))


def _shared_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for oid, name, type_code, phone, email, line in ORGANIZATIONS:
        out.append({
            "resourceType": "Organization", "id": oid, "active": True,
            "type": [_cc("http://terminology.hl7.org/CodeSystem/organization-type", type_code,
                         {"prov": "Healthcare Provider", "cg": "Community Group"}[type_code])],
            "name": name,
            "telecom": [{"system": "phone", "value": phone, "use": "work"},
                        {"system": "email", "value": email, "use": "work"}],
            "address": [{"line": [line], "city": "Riverside", "country": "US"}],
        })
    for pid, given, family, prefix, role, phone, email in PRACTITIONERS:
        name: dict[str, Any] = {"family": family, "given": [given]}
        if prefix:
            name["prefix"] = [prefix]
        out.append({
            "resourceType": "Practitioner", "id": pid, "active": True,
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi",
                            "value": str(1234567800 + len(out))}],
            "name": [name],
            "telecom": [{"system": "phone", "value": phone, "use": "work"},
                        {"system": "email", "value": email, "use": "work"}],
            "qualification": [{"code": {"text": role}}],
        })
    return out


def _bundle(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(r) for r in resources]}


def generate() -> dict[str, dict[str, Any]]:
    """All cohort files as {filename: JSON}: shared.json, one Bundle per patient, and index.json."""
    files: dict[str, dict[str, Any]] = {"shared.json": _bundle(_shared_resources())}
    index = []
    for s in SCENARIOS:
        resources = _PatientBuilder(s).build()
        files[f"{s.id}.json"] = _bundle(resources)
        index.append({
            "id": s.id, "name": f"{s.given} {s.family}", "gender": s.gender, "age": s.age,
            "summary": s.summary, "encounter": f"enc-{s.id}", "tags": scenario_tags(s),
            "resources": len(resources),
        })
    files["index.json"] = {"anchor": ANCHOR.isoformat().replace("+00:00", "Z"), "seed": SEED, "patients": index}
    return files


def _dump(data: dict[str, Any]) -> str:
    """Bundles one entry per line (small, diff-friendly); the index indented."""
    if data.get("resourceType") != "Bundle":
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    entries = ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in data["entry"])
    return f'{{"resourceType":"Bundle","type":"{data["type"]}","entry":[\n{entries}\n]}}\n'



def write(directory: Path = COHORT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    files = generate()
    for old in directory.glob("*.json"):
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        path = directory / name
        path.write_text(_dump(data), encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path = COHORT_DIR) -> list[str]:
    """Names of committed files that differ from what the generator produces (empty when in step)."""
    files = generate()
    stale = [n for n, d in files.items()
             if not (directory / n).exists() or (directory / n).read_text(encoding="utf-8") != _dump(d)]
    stale += [p.name for p in directory.glob("*.json") if p.name not in files]
    return sorted(stale)


# ---------------------------------------------------------------------------------------------------------
# Reading and loading
# ---------------------------------------------------------------------------------------------------------


def load_index(directory: Path = COHORT_DIR) -> list[dict[str, Any]]:
    """The patient index shown on the sandbox EHR's patient list."""
    return json.loads((directory / "index.json").read_text(encoding="utf-8"))["patients"]


def bundle_names(directory: Path = COHORT_DIR) -> list[str]:
    """shared.json first (patients reference its Practitioners and Organizations), then patients in order."""
    return ["shared.json"] + [f"{p['id']}.json" for p in load_index(directory)]


_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def shift_dates(data: Any, now: datetime, anchor: datetime = ANCHOR) -> Any:
    """A copy of `data` with every date/dateTime moved so that `anchor` becomes `now` (dates by whole days)."""
    delta = now - anchor
    days = timedelta(days=(now.date() - anchor.date()).days)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            if _DATETIME.match(v):
                t = datetime.fromisoformat(v.replace("Z", "+00:00")) + delta
                return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            if _DATE.match(v):
                return (date.fromisoformat(v) + days).isoformat()
        return v

    return walk(data)


def bundle_hash(bundle: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(bundle, sort_keys=True).encode()).hexdigest()[:16]


def prepare_bundle(bundle: dict[str, Any], now: datetime) -> tuple[dict[str, Any], str, str]:
    """(shifted bundle tagged with its content hash, key resource url, hash)."""
    digest = bundle_hash(bundle)
    out = shift_dates(copy.deepcopy(bundle), now)
    key = out["entry"][0]
    meta = key["resource"].setdefault("meta", {})
    meta["tag"] = [{"system": CS_COHORT_TAG, "code": digest, "display": "sandbox cohort version"}]
    return out, key["request"]["url"], digest


@dataclass
class LoadResult:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


async def load_cohort(fhir: Any, reset: bool = False, now: datetime | None = None,
                      directory: Path = COHORT_DIR) -> LoadResult:
    """Write the cohort into the FHIR server behind `fhir` (an httpx.AsyncClient whose base_url is the FHIR base).

    A Bundle whose key resource already carries the current content hash is skipped unless `reset`; each Bundle
    is one transaction, so a failure leaves no half-loaded patient. Failures are reported, never raised: the
    sandbox must still start (and say so) when one Bundle is refused.
    """
    now = now or datetime.now(timezone.utc)
    result = LoadResult()
    for name in bundle_names(directory):
        bundle = json.loads((directory / name).read_text(encoding="utf-8"))
        shifted, key_url, digest = prepare_bundle(bundle, now)
        if not reset:
            try:
                r = await fhir.get(key_url)
                if r.status_code == 200:
                    tags = r.json().get("meta", {}).get("tag", [])
                    if any(t.get("system") == CS_COHORT_TAG and t.get("code") == digest for t in tags):
                        result.skipped.append(name)
                        continue
            except Exception:  # noqa: BLE001 - the transaction below reports the real problem
                pass
        try:
            r = await fhir.post("", json=shifted, headers={"Content-Type": "application/fhir+json"})
            if r.status_code >= 300:
                result.failed.append(f"{name}: HTTP {r.status_code} {_outcome_text(r)}")
            else:
                result.loaded.append(name)
        except Exception as exc:  # noqa: BLE001
            result.failed.append(f"{name}: {type(exc).__name__}")
    if result.failed:
        log.warning("sandbox cohort: %d bundle(s) refused: %s", len(result.failed), "; ".join(result.failed)[:2000])
    log.info("sandbox cohort: %d bundle(s) written, %d unchanged", len(result.loaded), len(result.skipped))
    return result


def _outcome_text(response: Any) -> str:
    try:
        body = response.json()
        return "; ".join(i.get("diagnostics", "") for i in body.get("issue", []))[:300]
    except Exception:  # noqa: BLE001
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.sandbox.cohort",
                                     description="Generate the sandbox's synthetic oncology cohort")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"(re)write the Bundles into {COHORT_DIR}")
    group.add_argument("--check", action="store_true", help="exit 1 if the committed Bundles are out of date")
    args = parser.parse_args(argv)
    if args.write:
        paths = write()
        print(f"wrote {len(paths)} files to {COHORT_DIR}")
        return 0
    stale = check()
    if stale:
        print("out of date: " + ", ".join(stale) + " (run python -m service.sandbox.cohort --write)")
        return 1
    print("cohort files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
