"""Face-parsing label ids (CelebAMask-HQ order, spec §1.2) and the named groups built from them.

Every module that reads or writes a parsing map takes its ids from here.
"""

from __future__ import annotations

from enum import IntEnum


class Label(IntEnum):
    """The 19 CelebAMask-HQ classes; "L_"/"R_" are the subject's left and right."""

    BACKGROUND = 0
    SKIN = 1
    NOSE = 2
    GLASSES = 3
    L_EYE = 4
    R_EYE = 5
    L_BROW = 6
    R_BROW = 7
    L_EAR = 8
    R_EAR = 9
    MOUTH = 10
    U_LIP = 11
    L_LIP = 12
    HAIR = 13
    HAT = 14
    EARRING = 15
    NECKLACE = 16
    NECK = 17
    CLOTH = 18


NUM_LABELS = len(Label)
# The members as module names, for code that reads better without the class prefix.
(
    BACKGROUND,
    SKIN,
    NOSE,
    GLASSES,
    L_EYE,
    R_EYE,
    L_BROW,
    R_BROW,
    L_EAR,
    R_EAR,
    MOUTH,
    U_LIP,
    L_LIP,
    HAIR,
    HAT,
    EARRING,
    NECKLACE,
    NECK,
    CLOTH,
) = Label

#: SHMT's face mask M_face (spec §1.2): skin, nose, brows, ears, lips, neck. Eyes, glasses, inner mouth,
#: hair, hat, jewellery and cloth count as background for SHMT; these are also the only source pixels
#: the classic engine may change.
FACE_LABELS: tuple[int, ...] = (
    Label.SKIN,
    Label.NOSE,
    Label.L_BROW,
    Label.R_BROW,
    Label.L_EAR,
    Label.R_EAR,
    Label.U_LIP,
    Label.L_LIP,
    Label.NECK,
)
#: Both ears.
EAR_LABELS: tuple[int, ...] = (Label.L_EAR, Label.R_EAR)
#: Neck and ears (SHMT's M_ne, spec §1.2).
NECK_EARS_LABELS: tuple[int, ...] = (*EAR_LABELS, Label.NECK)
#: Eyes and inner mouth: not part of M_face, but inside the face a result is pasted back over.
EYES_MOUTH_LABELS: tuple[int, ...] = (Label.L_EYE, Label.R_EYE, Label.MOUTH)
