"""Radiology reports from findings: how the synthetic set's reports are written.

A report is "FINDINGS: ... IMPRESSION: ...", written from a study's findings dict alone, from many
paraphrases per statement (negations and hedges among them), so the text agrees with the image in
finding, side and severity, and varies as real reports do. Normal studies often get one of three
canonical reports, word for word: the duplicate reports that duplicate-aware positives are for.
dataset.py draws the findings and calls write_report with the study's own generator.

Depends on numpy (the generator it is given) and radiograph.lerp only.
"""

from synthetic.radiograph import lerp

# The canonical normal reports, word for word, as real radiology departments' templates give them.
CANONICAL_NORMAL = [
    "FINDINGS: The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax. "
    "IMPRESSION: No acute cardiopulmonary process.",
    "FINDINGS: The cardiomediastinal silhouette is within normal limits. The lungs are clear without "
    "focal consolidation, effusion or pneumothorax. IMPRESSION: No acute cardiopulmonary abnormality.",
    "FINDINGS: No acute abnormality. IMPRESSION: Normal chest radiograph.",
]
P_CANONICAL = 0.7

NORMAL_SENTENCES = [
    ["The lungs are clear.", "Lungs are clear.", "The lungs are well expanded and clear.", "Clear lungs."],
    ["Heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
     "Normal heart size.", "The heart is normal in size."],
    ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
     "No effusion or pneumothorax."],
    ["No acute osseous abnormality.", "Osseous structures are unremarkable.", ""],
]
NORMAL_IMPRESSIONS = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No acute intrathoracic process."]

# For an abnormal study, a few absent findings are stated as absent, as radiologists do.
NEGATIONS = {
    "pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "pleural effusion": ["No pleural effusion.", "No effusion.", "There is no pleural effusion."],
    "consolidation": ["No focal consolidation.", "No focal airspace consolidation."],
    "cardiomegaly": ["Heart size is normal.", "The cardiac silhouette is normal in size."],
    "edema": ["No pulmonary edema.", "No evidence of pulmonary edema."],
}

SEVERITY_WORDS = {  # per finding, how each severity grade is said
    "cardiomegaly": {"small": ["mild"], "moderate": ["moderate"], "large": ["marked", "severe"]},
    "edema": {"small": ["mild"], "moderate": ["moderate"], "large": ["severe"]},
    "atelectasis": {"small": ["minimal", "subsegmental"], "moderate": ["mild"], "large": ["extensive"]},
    "consolidation": {"small": ["patchy", "focal"], "moderate": ["confluent"], "large": ["dense", "extensive"]},
    "default": {"small": ["small"], "moderate": ["moderate", "moderate-sized"], "large": ["large"]},
}
ADVERBS = {"small": ["mildly"], "moderate": ["moderately"], "large": ["markedly", "severely"]}

# Paraphrases per finding. Fields: {sev} severity adjective, {adv} severity adverb, {side}
# right / left / bilateral, {where} a lobe, {size} a measurement, {dev} the device's sentence.
# Bilateral and unilateral wordings differ in number ("effusions"), hence separate lists.
TEMPLATES = {
    "cardiomegaly": [
        "The heart is {adv} enlarged.", "{sev} cardiomegaly.", "There is {sev} cardiomegaly.",
        "{sev} enlargement of the cardiac silhouette.", "The cardiac silhouette is {adv} enlarged.",
        "Heart size is {adv} enlarged."],
    "pleural effusion": [
        "There is a {sev} {side} pleural effusion.", "{sev} {side} pleural effusion.",
        "{sev} {side} effusion with blunting of the costophrenic angle.",
        "A {sev} amount of fluid in the {side} pleural space.",
        "{side} pleural effusion, {sev} in size.",
        "Blunting of the {side} costophrenic angle compatible with a {sev} effusion."],
    "pleural effusion/bilateral": [
        "There are {sev} bilateral pleural effusions.", "{sev} bilateral pleural effusions.",
        "{sev} pleural effusions on both sides.", "Bilateral {sev} effusions with blunting of the costophrenic angles.",
        "A {sev} amount of fluid in both pleural spaces."],
    "pneumothorax": [
        "There is a {sev} {side} pneumothorax.", "{sev} {side} apical pneumothorax.",
        "{side} pneumothorax, {sev} in size, with a visible pleural line.",
        "A {sev} {side}-sided pneumothorax is present.",
        "{side} pneumothorax measuring about {size} at the apex."],
    "consolidation": [
        "{sev} consolidation in the {where}.", "There is {sev} airspace consolidation in the {where}.",
        "{where} consolidation.", "{sev} airspace opacity in the {where}, concerning for pneumonia.",
        "Opacity in the {where} consistent with consolidation.",
        "Consolidation involving the {where}."],
    "atelectasis": [
        "{sev} atelectasis at the {side} lung base.",
        "{side} basilar atelectasis with elevation of the {side} hemidiaphragm.",
        "There is {sev} atelectasis in the {side} lower lobe.", "Plate-like atelectasis at the {side} base.",
        "Volume loss at the {side} base consistent with {sev} atelectasis."],
    "atelectasis/bilateral": [
        "{sev} bibasilar atelectasis.", "Bibasilar atelectasis.", "There is {sev} atelectasis at both lung bases.",
        "Plate-like atelectasis at both bases.", "Bilateral basilar atelectasis."],
    "edema": [
        "{sev} pulmonary edema.", "There is {sev} interstitial edema with Kerley B lines.",
        "{sev} pulmonary vascular congestion and interstitial edema.",
        "Bilateral perihilar haziness consistent with {sev} pulmonary edema.",
        "Findings of {sev} pulmonary edema."],
    "nodule": [
        "A {size} nodule in the {where}.", "There is a {size} {where} nodule.",
        "Round nodular opacity in the {where}, measuring {size}.", "{size} pulmonary nodule in the {where}."],
    "mass": [
        "A {size} mass in the {where}.", "There is a large {where} mass.",
        "{size} mass projecting over the {where}.", "Lobulated mass in the {where}, measuring {size}."],
    "support device": ["{dev}"],
}
HEDGED = {  # uncertainty for weak findings; each still names the finding and its side
    "cardiomegaly": ["Possible mild cardiomegaly.", "The cardiac silhouette may be mildly enlarged.",
                     "Borderline cardiomegaly."],
    "pleural effusion": ["Possible {sev} {side} pleural effusion.",
                         "Blunting of the {side} costophrenic angle may represent a {sev} effusion.",
                         "A {sev} {side} pleural effusion cannot be excluded."],
    "pleural effusion/bilateral": ["Possible {sev} bilateral pleural effusions.",
                                   "{sev} bilateral pleural effusions cannot be excluded."],
    "pneumothorax": ["Possible tiny {side} apical pneumothorax.", "A {sev} {side} pneumothorax cannot be excluded."],
    "consolidation": ["Possible early consolidation in the {where}.",
                      "Subtle opacity in the {where}; pneumonia cannot be excluded."],
    "atelectasis": ["Linear opacity at the {side} base, likely atelectasis.", "Possible {side} basilar atelectasis."],
    "atelectasis/bilateral": ["Linear opacities at both bases, likely atelectasis.", "Possible bibasilar atelectasis."],
    "edema": ["Possible mild interstitial edema.", "Mild vascular congestion; early edema cannot be excluded."],
    "nodule": ["Possible small nodule in the {where}.", "A nodular opacity in the {where} cannot be excluded."],
}
IMPRESSIONS = {
    "cardiomegaly": ["{sev} cardiomegaly.", "Cardiomegaly.", "Enlarged heart."],
    "pleural effusion": ["{sev} {side} pleural effusion.", "{side} pleural effusion."],
    "pleural effusion/bilateral": ["{sev} bilateral pleural effusions.", "Bilateral pleural effusions."],
    "pneumothorax": ["{sev} {side} pneumothorax.", "{side} pneumothorax."],
    "consolidation": ["{where} consolidation, likely pneumonia.", "{where} pneumonia.", "Consolidation in the {where}."],
    "atelectasis": ["{side} basilar atelectasis.", "Atelectasis at the {side} base."],
    "atelectasis/bilateral": ["Bibasilar atelectasis."],
    "edema": ["{sev} pulmonary edema.", "Pulmonary edema."],
    "nodule": ["{where} nodule; CT recommended for further evaluation.", "Pulmonary nodule in the {where}."],
    "mass": ["{where} mass, further evaluation with CT recommended.", "{where} mass."],
    "support device": ["{device} in satisfactory position.", "Support device in place."],
}
DEVICE_SENTENCES = {
    "endotracheal tube": ["Endotracheal tube terminates {cm} cm above the carina.",
                          "The endotracheal tube tip is {cm} cm above the carina.",
                          "Endotracheal tube in standard position."],
    "central venous catheter": ["{side} internal jugular central venous catheter with tip in the SVC.",
                                "The tip of the {side} subclavian catheter projects over the superior vena cava.",
                                "{side}-sided central venous catheter terminates in the SVC."],
    "enteric tube": ["Enteric tube courses below the diaphragm.", "Nasogastric tube with tip in the stomach.",
                     "The enteric tube tip projects over the stomach."],
    "pacemaker": ["{side} chest wall pacemaker with leads projecting over the heart.",
                  "{side}-sided pacemaker with leads in standard position.",
                  "Cardiac pacemaker in the {side} chest wall."],
}
LOBES = {("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe",
         ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
         ("left", "middle"): "left mid lung", ("left", "lower"): "left lower lobe",
         ("bilateral", "upper"): "bilateral upper lobes", ("bilateral", "middle"): "bilateral mid lungs",
         ("bilateral", "lower"): "both lower lobes"}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _sentence(text):
    text = " ".join(text.split())  # an empty slot leaves a double space
    return text[0].upper() + text[1:] if text else text


def _fields(rng, name, f):
    sev = f["severity"]
    out = {"side": f["side"] or "", "where": "", "size": "", "sev": "", "adv": "", "dev": "", "device": "", "cm": ""}
    if sev:
        out["sev"] = _pick(rng, SEVERITY_WORDS.get(name, SEVERITY_WORDS["default"])[sev])
        out["adv"] = _pick(rng, ADVERBS[sev])
    if "zone" in f:
        out["where"] = LOBES[(f["side"], f["zone"])]
    if name == "nodule":
        mm = f["size_mm"]
        out["size"] = f"{mm} mm" if mm < 10 else f"{mm / 10:.1f} cm"
    if name == "pneumothorax":
        out["size"] = f"{int(round(10 * lerp(0.22, 0.55, sev) * f['jitter'] * 4))} cm"
    if name == "support device":
        out["device"], out["cm"] = f["device"], f["tip_cm"]
        out["dev"] = _pick(rng, DEVICE_SENTENCES[f["device"]]).format(**out)
    return out


def write_report(findings, rng):
    """A 'FINDINGS: ... IMPRESSION: ...' report that states exactly the findings present."""
    if not findings:
        if rng.random() < P_CANONICAL:
            return CANONICAL_NORMAL[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        body = [_pick(rng, options) for options in NORMAL_SENTENCES]
        return "FINDINGS: " + " ".join(s for s in body if s) + " IMPRESSION: " + _pick(rng, NORMAL_IMPRESSIONS)

    # support devices are reported first, as radiologists do; the rest in random order
    names = sorted(findings, key=lambda n: (n != "support device", rng.random()))
    said, impression = [], []
    for name in names:
        f = findings[name]
        fields = _fields(rng, name, f)
        key = "mass" if name == "nodule" and f["severity"] == "large" else name
        if f["side"] == "bilateral" and f"{key}/bilateral" in TEMPLATES:
            key = f"{key}/bilateral"
        options = HEDGED.get(key, HEDGED.get(name)) if f["hedged"] else TEMPLATES[key]
        said.append(_sentence(_pick(rng, options).format(**fields)))
        if name != "support device" or rng.random() < 0.5:  # devices often go unmentioned here
            ikey = key if key in IMPRESSIONS else name
            lead = "Possible " if f["hedged"] else ""
            text = _pick(rng, IMPRESSIONS[ikey]).format(**fields)
            impression.append(_sentence(lead + (text[0].lower() + text[1:] if lead else text)))
    absent = [n for n in NEGATIONS if n not in findings]
    for i in rng.permutation(len(absent))[:int(rng.integers(0, 3))]:
        said.append(_pick(rng, NEGATIONS[absent[i]]))
    if not impression:
        impression = ["No acute cardiopulmonary process."]
    return "FINDINGS: " + " ".join(said) + " IMPRESSION: " + " ".join(impression)


def finding_sentence(report):
    """The first sentence of a report's FINDINGS: for a single-finding study, the one that names
    its finding (write_report says the findings first, negations after)."""
    body = report.removeprefix("FINDINGS: ")
    return body.split(". ")[0].rstrip(".") + "."
