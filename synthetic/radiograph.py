"""
Drawing a frontal chest radiograph-like image from a patient and its findings: the picture half of
the synthetic data set (patients.py samples a patient and its findings' details, dataset.py
assembles the studies and calls render_image for each, reports.py writes the reports).

Shapes (body, lungs, heart, mediastinum, diaphragm, ribs, vessels) are soft masks in normalised
coordinates, summed as densities and mapped to brightness at the end, as a radiograph does; each
of the 8 findings is drawn with its real visual sign, by a step of its own (render_image reads
as the list of steps). A pure function of its inputs: the same patient and findings give the same
pixels. For grounding, render_with_masks gives with the image a mask per finding, the place
where drawing it changed the picture (finding_masks at the end; docs/grounding.md).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from synthetic.masks import fill_holes, largest_component

# Radiological convention: a frontal chest film is displayed as if the viewer faces the patient,
# so the patient's RIGHT is on the image's LEFT (small column index). A side is stored by its
# anatomical name ("right" / "left", as the report says it) and drawn at this sign of image x:
SIDE_SIGN = {"right": -1.0, "left": +1.0}


def sides_of(side):
    """'bilateral' -> both sides; 'right' / 'left' -> itself; None -> none."""
    return ["right", "left"] if side == "bilateral" else ([side] if side else [])


# -----------------------------------------------------------------------------
# Drawing. Everything lives in normalised coordinates u (left -> right) and v (top -> bottom),
# both in [-1, 1], so a patient looks the same at 64 and at 224 px. Shapes are soft masks in
# [0, 1] built with whole-array numpy (no per-pixel loops): ~1-3 ms per image at 64 px.
# We sum a "density" D (air ~0, soft tissue ~0.55, bone and metal higher) and map it to
# brightness at the end, as a radiograph does: dense = bright, air = dark.

SOFT = 0.04  # edge softness in normalised units (about 1.3 px at 64 px)


@functools.lru_cache(maxsize=4)
def _grid(size):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(c, c)  # (size, size) each: u = column coordinate, v = row coordinate
    u.flags.writeable = v.flags.writeable = False  # shared between calls
    return u, v


def _ramp(x, width=SOFT):
    """A soft step: 0 for x < -width/2, 1 for x > width/2."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def _ellipse(u, v, cx, cy, a, b):
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return _ramp((1 - r) * min(a, b))


def _segment(u, v, p0, p1, half_width):
    """Soft mask of a thick line segment (a capsule) from p0 to p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    d = np.sqrt((u - p0[0] - t * dx) ** 2 + (v - p0[1] - t * dy) ** 2)
    return _ramp(half_width - d, 0.02)


def _polyline(u, v, points, half_width):
    return np.maximum.reduce([_segment(u, v, a, b, half_width) for a, b in zip(points, points[1:])])


@dataclass
class _Lung:  # the geometry of one hemithorax, derived from the patient (and volume loss)
    s: float      # SIDE_SIGN: -1 patient right (image left), +1 patient left
    cx: float
    cy: float
    a: float
    b: float
    top: float
    dia: float    # height of the diaphragm dome
    dome: float

    def at(self, x, y):
        """Image point of a position in lung coordinates: x 0 = centre .. 1 = lateral edge,
        y 0 = apex .. 1 = dome of the diaphragm."""
        return self.cx + self.s * x * self.a, self.top + y * (self.dia - self.top)

    def hilum(self):
        """Image point of the hilum, where the vessels radiate from (and edema's haze centres)."""
        return self.cx - self.s * 0.45 * self.a, self.top + 0.55 * (self.dia - self.top)


@dataclass
class _Chest:
    """What the finding steps draw on: the grid, the patient's geometry, and per side ("right",
    "left") the soft masks of the lung that findings change."""
    u: np.ndarray
    v: np.ndarray
    patient: object
    mid: float          # the midline's u (patient positioning)
    heart_y: float      # height of the heart's centre, where pacemaker leads end
    lungs: dict         # side -> _Lung
    hemi: dict          # side -> the hemithorax, below the dome of the diaphragm too
    lung_mask: dict     # side -> the lung: the hemithorax above the dome
    air: dict           # side -> the lung's air: lung_mask less heart and mediastinum (and fluid)
    vessels: dict       # side -> vessel markings, drawn where there is air


SEVERITY_SCALE = {"small": 0.0, "moderate": 0.5, "large": 1.0}


def lerp(lo, hi, severity):
    """lo for a small finding, hi for a large one, halfway for moderate (reports size it alike)."""
    return lo + (hi - lo) * SEVERITY_SCALE[severity]


def render_image(patient, findings, image_size, undrawn=()):
    """The (image_size, image_size) float32 radiograph in [0, 1] of this patient with these findings.

    Drawn in steps: the geometry (as the findings that move anatomy leave it), the normal anatomy
    summed as a density D, the findings that change the air in a lung (AIR_CHANGES), the lungs'
    air, the opacities inside the lungs (OPACITIES), and the exposure that maps D to brightness.
    undrawn: findings whose own step is skipped while _geometry still applies them (finding_masks
    uses it to see atelectasis's band apart from its volume loss); a radiograph leaves it empty."""
    u, v = _grid(image_size)
    heart_size, lungs = _geometry(patient, findings)
    body = _body(u, v, patient)
    heart, mediastinum, trachea, heart_y = _mediastinum(u, v, patient, heart_size)
    spine, clavicles, ribs = _bones(u, v, patient)
    chest, rib_cage = _lungs(u, v, patient, lungs, heart, mediastinum, heart_y)
    D = 0.55 * body + 0.10 * spine * body + 0.10 * clavicles + 0.05 * ribs * rib_cage \
        - 0.18 * trachea  # (H, W)

    extra = np.zeros_like(D)
    for name, step in AIR_CHANGES:
        if name in findings and name not in undrawn:
            for layer in step(chest, findings[name]):
                extra += layer
    for side in lungs:
        D += chest.air[side] * (-0.42 + 0.08 * chest.vessels[side])
    D += extra

    for name, step in OPACITIES:
        if name in findings and name not in undrawn:
            for layer in step(chest, findings[name]):
                D += layer
    return _expose(D, patient)


# --- the normal anatomy, and the findings that move it


def _geometry(p, F):
    """((heart_w, heart_h, heart_x), {side: _Lung}): the heart's size and place and each lung's
    shape. Volume loss (atelectasis) pulls the hemidiaphragm up; cardiomegaly enlarges the heart,
    mostly towards the patient's left."""
    mid = p.x0
    dia = {"right": p.diaphragm_right + p.y0, "left": p.diaphragm_left + p.y0}
    heart_w, heart_h, heart_x = p.heart_w * p.width, p.heart_h, p.heart_x
    if "atelectasis" in F:
        f = F["atelectasis"]
        lift = lerp(0.12, 0.22, f["severity"]) * f["jitter"]
        for side in sides_of(f["side"]):
            dia[side] -= lift
    if "cardiomegaly" in F:
        f = F["cardiomegaly"]
        grow = lerp(1.35, 1.70, f["severity"]) * (1 + 0.3 * (f["jitter"] - 1))
        heart_w, heart_h, heart_x = heart_w * grow, heart_h * (1 + 0.45 * (grow - 1)), heart_x + 0.25 * (grow - 1) * heart_w

    lungs = {}
    for side, s in SIDE_SIGN.items():
        a = (p.lung_w_right if side == "right" else p.lung_w_left) * p.width
        top, bottom = p.lung_top + p.y0, dia[side] + p.dome + 0.2
        lungs[side] = _Lung(s, mid + s * 0.43 * p.width, (top + bottom) / 2, a, (bottom - top) / 2,
                            top, dia[side], p.dome)
    return (heart_w, heart_h, heart_x), lungs


def _body(u, v, p):
    """The soft tissue of the trunk: a rounded box that fades out at its edges."""
    return _ramp(1 - ((u - p.x0) / (0.92 * p.width)) ** 4 - ((v - 0.3) / 1.35) ** 4, 0.15)  # (H, W)


def _mediastinum(u, v, p, heart_size):
    """(heart, mediastinum, trachea, heart_y): the heart's mask, the superior mediastinum with the
    aortic knob, the trachea (air, darker), and the height of the heart's centre."""
    heart_w, heart_h, heart_x = heart_size
    mid = p.x0
    hy = p.diaphragm_left + p.y0 - 0.3 * heart_h  # the heart rests on the left hemidiaphragm
    heart = _ellipse(u, v, mid + heart_x, hy, heart_w, heart_h)
    mediastinum = np.maximum(
        _ramp(mid + p.mediastinum_w - np.abs(u - mid)) * _ramp(hy - v),                   # superior
        _ellipse(u, v, mid + 0.10, -0.33 + p.y0, 0.075, 0.07))                             # aortic knob
    trachea = _ramp(0.03 - np.abs(u - mid)) * _ramp(-0.30 + p.y0 - v)
    return heart, mediastinum, trachea, hy


def _bones(u, v, p):
    """(spine, clavicles, ribs): the ribs are a wave over the whole image, which _lungs' rib cage
    confines to the chest."""
    mid = p.x0
    spine = _ramp(0.055 - np.abs(u - mid))
    clavicles = np.maximum(_segment(u, v, (mid - 0.07, -0.68 + p.y0), (mid - 0.6 * p.width, -0.80 + p.y0), 0.035),
                           _segment(u, v, (mid + 0.07, -0.68 + p.y0), (mid + 0.6 * p.width, -0.80 + p.y0), 0.035))
    rib_wave = np.sin(2 * math.pi * (v - p.rib_curve * (u - mid) ** 2) / p.rib_spacing + p.rib_phase)
    ribs = np.clip((rib_wave - 0.35) * 2.5, 0, 1)
    return spine, clavicles, ribs


def _lungs(u, v, p, lungs, heart, mediastinum, heart_y):
    """(_Chest, rib_cage): each lung's masks, air and vessels, and where the ribs show."""
    chest = _Chest(u, v, p, p.x0, heart_y, lungs, hemi={}, lung_mask={}, air={}, vessels={})
    rib_cage = np.zeros_like(u)
    for side, L in lungs.items():
        chest.hemi[side] = _ellipse(u, v, L.cx, L.cy, L.a, L.b)
        below_dome = L.dia + L.dome * ((u - L.cx) / L.a) ** 2  # the dome falls off laterally
        chest.lung_mask[side] = chest.hemi[side] * _ramp(below_dome - v)
        chest.air[side] = chest.lung_mask[side] * (1 - heart) * (1 - mediastinum)
        rib_cage = np.maximum(rib_cage, chest.hemi[side] * _ramp(below_dome + 0.08 - v, 0.1))
        chest.vessels[side] = _vessels(u, v, p, L)
    return chest, rib_cage


def _vessels(u, v, p, L):
    """Vessel markings of one lung: streaks radiating from the hilum, thinning towards the periphery."""
    hx, hyl = L.hilum()
    dx, dy = (u - hx) * L.s, v - hyl
    theta, dist = np.arctan2(dy, dx), np.sqrt(dx * dx + dy * dy)
    branches = np.clip(np.cos(p.vessel_freq * theta + 5.0 * dist + p.vessel_phase)
                       * np.cos(1.7 * p.vessel_freq * theta - 9.0 * dist), 0, 1) ** 2
    return branches * np.exp(-dist / 0.35)


def _expose(D, p):
    """Density to brightness: windowing, a detector curve, and quantum noise drawn from the
    patient's own noise_seed (the image's only randomness)."""
    image = np.clip(p.brightness + p.contrast * D, 0, 1) ** p.gamma
    noise = np.random.default_rng(p.noise_seed).standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + p.noise * noise, 0, 1).astype(np.float32)


# --- findings that change the air in a lung: fluid replaces it, a pneumothorax adds some. Each
# step takes the _Chest and the finding's details, updates the lung's air and vessels, and returns
# the density layers it adds (render_image sums them after the air).


def _pleural_effusion(c, f):
    layers = []
    for side in sides_of(f["side"]):
        L = c.lungs[side]
        h = lerp(0.25, 0.55, f["severity"]) * f["jitter"] * (L.dia - L.top)
        lateral = np.clip((c.u - L.cx) * L.s / L.a, 0, 1)
        # the meniscus: fluid climbs the lateral chest wall, blunting the costophrenic angle
        surface = L.dia + 0.5 * L.dome - h - (0.35 * h + 0.05) * lateral ** 2
        fluid = c.hemi[side] * _ramp(c.v - surface)
        c.air[side] = c.air[side] * (1 - fluid)
        c.vessels[side] = c.vessels[side] * (1 - fluid)
        layers.append(0.04 * fluid * c.lung_mask[side])  # fluid is a little denser than tissue
    return layers


def _pneumothorax(c, f):
    layers = []
    u, v = c.u, c.v
    for side in sides_of(f["side"]):
        L = c.lungs[side]
        k = lerp(0.22, 0.55, f["severity"]) * f["jitter"]
        # the lung collapses towards its hilum (medially and down), leaving air with no
        # vessels at the apex and lateral edge, bounded by the thin visceral pleural line
        ca, cb = L.a * (1 - 0.7 * k), L.b * (1 - 0.6 * k)
        ccx, ccy = L.cx - L.s * 0.5 * k * L.a, L.cy + 0.5 * k * L.b
        r = np.sqrt(((u - ccx) / ca) ** 2 + ((v - ccy) / cb) ** 2)
        lung_side = c.air[side]
        collapsed = _ramp((1 - r) * min(ca, cb))
        gap = lung_side * (1 - collapsed)
        c.vessels[side] = c.vessels[side] * collapsed
        pleural_line = _ramp(0.018 - np.abs(1 - r) * min(ca, cb), 0.02) * c.hemi[side]
        layers.append(-0.10 * gap + 0.18 * pleural_line * (lung_side > 0.3) + 0.04 * collapsed * lung_side)
    return layers


# --- opacities inside the lungs: each step takes the _Chest and the finding's details and returns
# the density layers it adds.


def _consolidation(c, f):
    layers = []
    sigma = lerp(0.09, 0.12, f["severity"]) * f["jitter"]
    spread = lerp(0.10, 0.15, f["severity"])
    for side in sides_of(f["side"]):
        L = c.lungs[side]
        cx, cy = L.at(f["x"], {"upper": 0.28, "middle": 0.55, "lower": 0.80}[f["zone"]])
        # a patchy opacity: overlapping Gaussian blobs around the lobe's centre
        patch = np.zeros_like(c.u)
        for du, dv in f["blobs"]:
            bx, by = cx + L.s * du * spread, cy + dv * spread
            patch += np.exp(-((c.u - bx) ** 2 + (c.v - by) ** 2) / (2 * sigma ** 2))
        layers.append(0.45 * np.clip(patch, 0, 1) * c.lung_mask[side])
    return layers


def _atelectasis(c, f):
    """The band of atelectasis; its volume loss (the raised hemidiaphragm) is _geometry's."""
    layers = []
    half = lerp(0.05, 0.08, f["severity"])
    for side in sides_of(f["side"]):
        L = c.lungs[side]
        y = L.dia - 0.12 - f["band_y"]
        # a plate-like (discoid) band across the lower lung, above the raised hemidiaphragm
        p0, p1 = (L.cx + L.s * 0.75 * L.a, y - f["tilt"]), (L.cx - L.s * 0.25 * L.a, y + f["tilt"])
        layers.append(0.42 * _segment(c.u, c.v, p0, p1, half) * c.lung_mask[side])
    return layers


def _edema(c, f):
    layers = []
    u, v = c.u, c.v
    amp = lerp(0.25, 0.40, f["severity"]) * f["jitter"]
    for side, L in c.lungs.items():
        # bat-wing: haze around the hila, fading to the periphery ...
        hx, hyl = L.hilum()
        haze = np.exp(-(((u - hx) / 0.30) ** 2 + ((v - hyl) / 0.38) ** 2))
        # ... and Kerley B lines: short horizontal lines at the lateral lung bases
        lateral = np.clip(((u - L.cx) * L.s / L.a - 0.55) * 4, 0, 1)
        kerley = np.clip((np.cos(2 * math.pi * v / 0.075) - 0.6) * 3, 0, 1) * lateral * _ramp(v - (L.dia - 0.35))
        layers.append((amp * haze + 0.2 * kerley) * c.lung_mask[side])
    return layers


def _nodule(c, f):
    L = c.lungs[f["side"]]
    cx, cy = L.at(f["x"], {"upper": 0.25, "middle": 0.5, "lower": 0.72}[f["zone"]])
    radius = 0.025 + 0.0017 * f["size_mm"]
    return [0.36 * _ramp(radius - np.sqrt((c.u - cx) ** 2 + (c.v - cy) ** 2), 0.03)]


def _support_device(c, f):
    return [0.6 * _device(c, f)]


def _device(c, f):
    """Mask of a radiopaque line or tube: thin, very bright, with a visible tip."""
    u, v, mid, p = c.u, c.v, c.mid, c.patient
    carina = -0.28 + p.y0
    kind, tip = f["device"], 0.03 * f["tip_cm"]
    if kind == "endotracheal tube":
        pts = [(mid, -1.1), (mid, carina - tip)]
    elif kind == "enteric tube":  # down the oesophagus, through the diaphragm, into the stomach
        dia = c.lungs["left"].dia
        pts = [(mid - 0.01, -1.1), (mid + 0.02, dia + 0.05), (mid + 0.25, dia + 0.25)]
    elif kind == "central venous catheter":  # from a jugular / subclavian vein into the SVC
        s = SIDE_SIGN[f["side"]]
        pts = [(mid + s * 0.55 * p.width, -0.88 + p.y0), (mid + s * 0.15, -0.62 + p.y0),
               (mid - 0.06, carina + 0.05 + tip)]
    else:  # pacemaker: a generator box in the chest wall, leads into the heart
        s = SIDE_SIGN[f["side"]]
        bx, by = mid + s * 0.55 * p.width, -0.62 + p.y0
        box = _ramp(0.08 - np.abs(u - bx), 0.02) * _ramp(0.055 - np.abs(v - by), 0.02)
        leads = _polyline(u, v, [(bx, by), (mid + s * 0.1, -0.55 + p.y0), (mid + 0.05, c.heart_y)], 0.018)
        return np.maximum(box * 1.3, leads)
    line = _polyline(u, v, pts, 0.022)
    tip_mark = _ramp(0.035 - np.sqrt((u - pts[-1][0]) ** 2 + (v - pts[-1][1]) ** 2), 0.02)
    return np.maximum(line, tip_mark)


# The finding steps, in the order render_image draws them (the order of the sums is part of the
# pixels' exact values).
AIR_CHANGES = (("pleural effusion", _pleural_effusion), ("pneumothorax", _pneumothorax))
OPACITIES = (("consolidation", _consolidation), ("atelectasis", _atelectasis), ("edema", _edema),
             ("nodule", _nodule), ("support device", _support_device))


# -----------------------------------------------------------------------------
# Where each finding is: a mask per finding for grounding (grounding.py scores a model's
# patch-text similarity map against these masks), the place a radiologist would box.
#
# The definition, in two steps. (1) The change: the pixels where the image and the image without
# the finding's own step (AIR_CHANGES, OPACITIES; every other finding stays) differ by more than
# MASK_THRESHOLD. Both renders share the quantum noise (drawn from the patient's noise_seed, the
# only randomness), so the difference is the finding's alone. Without its step, not without the
# finding: atelectasis's volume loss (_geometry raises the hemidiaphragm) reshapes the lung and so
# redraws its edges, ribs and vessels: a change in a median of 40 pieces (grounding_set(50, 64)),
# a third of its pixels speckle over both lung fields; the change of its band alone is the plate.
# Cardiomegaly has no step (its sign is the enlarged heart): its change is the whole finding's.
# (2) The place: the largest 4-connected piece of the change, with its holes filled; for a
# bilateral finding, and for the heart, whose two borders both move out, the largest piece on each
# side of the midline. So a mask is one region per side a finding is drawn on, with no speck of
# texture the finding moved.

# A change counts when it is at least the strongest quantum noise the generator draws (the
# patient's noise std is 0.005..0.02, patients.sample_patient): a smaller change is not visible
# on that pixel against the noise. The change inside every localised finding is many times larger,
# so the masks hardly depend on the exact value.
MASK_THRESHOLD = 0.02

# Findings that have no place: pulmonary edema is a bilateral, perihilar haze with Kerley lines at
# both bases, spread over both lungs; a mask of the pixels it changes would cover most of the
# chest, and a map that "points" anywhere in the lungs would score a hit. Its mask is None. The
# others are places: cardiomegaly changes the heart borders and the lung next to them (MS-CXR
# boxes the heart too), and a support device is a thin line and its tip (a small mask, but a place).
NO_PLACE = frozenset({"edema"})


def finding_masks(patient, findings, image_size, threshold=MASK_THRESHOLD):
    """{finding: bool (image_size, image_size) array, its place as defined above; None for the
    findings of NO_PLACE}. The image itself is unchanged: render_image(patient, findings, image_size)."""
    image = render_image(patient, findings, image_size)
    return _masks(image, patient, findings, image_size, threshold)


def render_with_masks(patient, findings, image_size, threshold=MASK_THRESHOLD):
    """(image, masks): render_image's image, byte for byte, and finding_masks' masks."""
    image = render_image(patient, findings, image_size)
    return image, _masks(image, patient, findings, image_size, threshold)


def _masks(image, patient, findings, image_size, threshold):
    masks, u = {}, _grid(image_size)[0]
    for name, f in findings.items():
        if name in NO_PLACE:
            masks[name] = None
            continue
        if name in dict(AIR_CHANGES + OPACITIES):   # its step left out, its geometry kept
            without = render_image(patient, findings, image_size, undrawn=(name,))
        else:
            without = render_image(patient, {k: v for k, v in findings.items() if k != name}, image_size)
        changed = np.abs(image - without) > threshold
        if f["side"] == "bilateral" or name == "cardiomegaly":   # a piece on each side of the midline
            pieces = [largest_component(changed & ((u - patient.x0) * s > 0)) for s in SIDE_SIGN.values()]
        else:
            pieces = [largest_component(changed)]
        masks[name] = fill_holes(np.logical_or.reduce(pieces))
    return masks

