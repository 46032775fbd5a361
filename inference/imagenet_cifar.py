"""ImageNet-1k -> CIFAR-10 class mapping, for serving ImageNet-trained ResNet50 on CIFAR.

The ImageNet head has 1000 classes (Keras index order = sorted WordNet ids).  A
CIFAR-10 class gets the *sum* of the softmax probabilities of the ImageNet classes
listed for it below; the predicted CIFAR class is the argmax of those ten sums and
its confidence is its sum divided by the total of the ten sums (the probability
mass on ImageNet classes that belong to no CIFAR class - pizza, guitar, ... - is
dropped, then the rest renormalised).  That way a prediction is one of the ten
CIFAR labels and can be compared with the ground truth.

Choices (CIFAR-10's own definitions: "automobile" = sedans, SUVs and the like;
"truck" = big trucks only; "deer" has no ImageNet class, so similar-looking
antelopes stand in; "horse" uses sorrel, zebra and horse cart):

=========== ===================================================================
airplane    404 airliner, 895 warplane, 908 wing
automobile  407 ambulance, 436 beach wagon, 468 cab, 479 car wheel,
            511 convertible, 581 grille, 609 jeep, 627 limousine, 656 minivan,
            661 Model T, 734 police van, 751 racer, 817 sports car
bird        7-24 (cock ... great grey owl), 80-100 (black grouse ... black swan),
            127-146 (white stork ... albatross)
cat         281-285 (tabby, tiger cat, Persian, Siamese, Egyptian cat)
deer        351 hartebeest, 352 impala, 353 gazelle
dog         151-268 (Chihuahua ... Mexican hairless: every domestic dog breed)
frog        30 bullfrog, 31 tree frog, 32 tailed frog
horse       339 sorrel, 340 zebra, 603 horse cart
ship        403 aircraft carrier, 472 canoe, 484 catamaran, 510 container ship,
            554 fireboat, 576 gondola, 625 lifeboat, 628 liner, 694 paddlewheel,
            724 pirate ship, 780 schooner, 814 speedboat, 833 submarine,
            871 trimaran, 914 yawl
truck       555 fire engine, 569 garbage truck, 675 moving van, 717 pickup,
            864 tow truck, 867 trailer truck
=========== ===================================================================

The pickup goes to "truck" although CIFAR excludes pickups from both vehicle
classes: at 32x32 they look far more like trucks than like sedans.
"""

from __future__ import annotations

from common.labels import CIFAR10_CLASSES

IMAGENET_NUM_CLASSES = 1000


def _span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


IMAGENET_TO_CIFAR10: dict[str, tuple[int, ...]] = {
    "airplane": (404, 895, 908),
    "automobile": (407, 436, 468, 479, 511, 581, 609, 627, 656, 661, 734, 751, 817),
    "bird": _span(7, 24) + _span(80, 100) + _span(127, 146),
    "cat": _span(281, 285),
    "deer": (351, 352, 353),
    "dog": _span(151, 268),
    "frog": (30, 31, 32),
    "horse": (339, 340, 603),
    "ship": (403, 472, 484, 510, 554, 576, 625, 628, 694, 724, 780, 814, 833, 871, 914),
    "truck": (555, 569, 675, 717, 864, 867),
}


def mapping_matrix():
    """A 1000x10 float32 0/1 matrix M: cifar_scores = imagenet_probs @ M (classes in CIFAR10_CLASSES order)."""
    import numpy as np

    matrix = np.zeros((IMAGENET_NUM_CLASSES, len(CIFAR10_CLASSES)), dtype=np.float32)
    for column, name in enumerate(CIFAR10_CLASSES):
        matrix[list(IMAGENET_TO_CIFAR10[name]), column] = 1.0
    return matrix
