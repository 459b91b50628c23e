"""`python -m benchmarks.blur_fit DATA_ROOT`: the audit's blur fit (`measure.blurs`) without any model, as
docs/zoo.md reports it (rules version 9).

For each seeded 1,000-image subset of the CIFAR-10 test images and each class named, every blur of `BLURS` is
planted on half of the class's images (`data.zoo`, as the benchmark plants its recipes); the carriers and the box are
found as the audit finds them, then the box and sigma are fitted twice: by the product (`blurs.extent`, least squares
between the logarithms of the detail maps) and by least squares between the maps themselves (rules version 8, written
here as the reference). One line per case, then how often each fit reads the planted sigma exactly, split by whether
the box was found (IoU >= 0.9 with the planted one). 11 s for 2 subsets x 2 classes on the 2-core AMD EPYC.
"""

from __future__ import annotations

import argparse

import torch

from gradcam_repro.data.bias import plant
from gradcam_repro.data.cifar10 import load_cifar10
from gradcam_repro.data.zoo import Planted, gaussian_blur
from gradcam_repro.measure import blurs
from gradcam_repro.measure.moving import grow_box
from gradcam_repro.measure.patterns import share_box
from gradcam_repro.measure.spray import MIN_CLUSTER_IMAGES, box_iou

# (placement, size px, sigma px): the benchmark's blur first, then the probes and the ladder's ends.
BLURS = (("centre", 20, 3.0), ("bottom-left", 20, 3.0), ("centre", 16, 3.0), ("centre", 16, 2.0),
         ("top-right", 12, 3.0), ("centre", 20, 1.0), ("centre", 20, 5.0), ("centre", 16, 4.0), ("centre", 20, 1.5))
FOUND_IOU = 0.9


def linear_extent(wanted: torch.Tensor, reference: torch.Tensor, box: tuple) -> tuple[tuple, float]:
    """Rules version 8's fit: as `blurs.extent`, but least squares between the mean detail maps themselves."""
    size = tuple(reference.shape[-2:])
    blurred = {sigma: gaussian_blur(reference, sigma) for sigma in blurs.SIGMA_LADDER}

    def misfit(candidate: tuple[tuple, float]) -> float:
        inside = torch.where(blurs.mask_of(candidate[0], *size), blurred[candidate[1]], reference)
        return float((blurs.detail(inside).mean(dim=0) - wanted).pow(2).sum())

    return min(((grow_box(box, px, size), s) for px in blurs.GROW_PX for s in blurs.SIGMA_LADDER), key=misfit)


def one_case(images: torch.Tensor, labels: torch.Tensor, target: int, blur: Planted) -> dict | None:
    """Plant `blur` on half of class `target`'s images; the fits of its carriers (None: fewer than the audit tests)."""
    planted, carries, _ = plant(images, labels, target, 0.5, 0, blur)
    members = (labels == target).nonzero().squeeze(1)
    others = (labels != target).nonzero().squeeze(1)
    reference = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(1))[:len(members)]]
    carried, _ = blurs.carriers(planted[members], planted[reference], 0)
    if int(carried.sum()) < MIN_CLUSTER_IMAGES:
        return {"carriers": int(carried.sum()), "planted": int(carries[members].sum())}
    wanted = blurs.detail(planted[members][carried]).mean(dim=0)
    box = share_box(blurs.detail(planted[reference]).mean(dim=0) - wanted)
    true_box = blur.box
    fits = {"logarithms": blurs.extent(wanted, planted[reference], box),
            "maps": linear_extent(wanted, planted[reference], box)}
    return {"carriers": int(carried.sum()), "planted": int(carries[members].sum()),
            **{name: (box_iou(b, true_box), sigma) for name, (b, sigma) in fits.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", help="folder holding CIFAR-10 (as --data-root)")
    parser.add_argument("--subsets", type=int, nargs="+", default=[0, 1], help="seeds of the 1,000-image subsets")
    parser.add_argument("--classes", nargs="+", default=["frog", "truck"], help="the classes the blur is planted on")
    args = parser.parse_args(argv)
    data = load_cifar10(args.data_root, download=False)
    exact = {(fit, found): [0, 0] for fit in ("logarithms", "maps") for found in (True, False)}
    for subset in args.subsets:
        index = torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(subset))[:1000]
        images, labels = data.test_images[index], data.test_labels[index]
        for name in args.classes:
            for placement, size, sigma in BLURS:
                blur = Planted(kind="blur", size=size, placement=placement, strength=sigma)
                case = one_case(images, labels, data.classes.index(name), blur)
                what = f"subset {subset} {name} {size} px {placement} sigma {sigma:g}: carriers {case['carriers']} of {case['planted']}"
                if "maps" not in case:
                    print(f"{what}; too few to test")
                    continue
                for fit in ("logarithms", "maps"):
                    iou, read = case[fit]
                    tally = exact[(fit, iou >= FOUND_IOU)]
                    tally[0], tally[1] = tally[0] + (read == sigma), tally[1] + 1
                print(f"{what}; " + "; ".join(f"{fit}: IoU {case[fit][0]:.2f}, sigma {case[fit][1]:g}"
                                              for fit in ("logarithms", "maps")))
    for (fit, found), (hit, n) in exact.items():
        print(f"{fit:10s} box {'found' if found else 'not found'}: sigma exact in {hit} of {n}")


if __name__ == "__main__":
    main()
