"""The demo target's data: a generated inventory, and the stats computed per call."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any

ITEM_COUNT = 400
CATEGORIES = ("tools", "garden", "kitchen", "toys", "books", "sports", "office", "audio")
WAREHOUSES = ("ams-1", "fra-2", "dub-1", "waw-3")
_NOUNS = ("widget", "gadget", "spanner", "kettle", "lamp", "rake", "drum", "novel", "ball", "chair")
_ADJECTIVES = ("blue", "heavy", "compact", "deluxe", "basic", "silent", "rugged", "smart")


@dataclass(frozen=True)
class Item:
    id: int
    sku: str
    name: str
    category: str
    warehouse: str
    price: float
    quantity: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sku": self.sku,
            "name": self.name,
            "category": self.category,
            "warehouse": self.warehouse,
            "price": self.price,
            "quantity": self.quantity,
        }


def generate_items(count: int = ITEM_COUNT, seed: int = 20240607) -> tuple[Item, ...]:
    """The same inventory every time (ids 1..count), so tests can rely on it."""
    rng = random.Random(seed)
    items = []
    for i in range(1, count + 1):
        category = rng.choice(CATEGORIES)
        items.append(
            Item(
                id=i,
                sku=f"{category[:3].upper()}-{i:05d}",
                name=f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}",
                category=category,
                warehouse=rng.choice(WAREHOUSES),
                price=round(rng.lognormvariate(3.0, 0.8), 2),
                quantity=rng.randrange(0, 500),
            )
        )
    return tuple(items)


def inventory_stats(
    items: tuple[Item, ...], *, top: int = 10, category: str | None = None
) -> dict[str, Any]:
    """Aggregate stats over the inventory; recomputed on every call, on purpose."""
    selected = [it for it in items if category is None or it.category == category]
    total_quantity = 0
    total_value = 0.0
    out_of_stock = 0
    by_category: dict[str, dict[str, float]] = {}
    by_warehouse: dict[str, int] = {}
    prices = []
    for it in selected:
        value = it.price * it.quantity
        total_quantity += it.quantity
        total_value += value
        if it.quantity == 0:
            out_of_stock += 1
        cat = by_category.setdefault(it.category, {"items": 0, "quantity": 0, "value": 0.0})
        cat["items"] += 1
        cat["quantity"] += it.quantity
        cat["value"] += value
        by_warehouse[it.warehouse] = by_warehouse.get(it.warehouse, 0) + it.quantity
        prices.append(it.price)
    prices.sort()
    n = len(prices)
    median = (
        0.0 if n == 0 else (prices[n // 2] if n % 2 else (prices[n // 2 - 1] + prices[n // 2]) / 2)
    )
    top_items = heapq.nlargest(top, selected, key=lambda it: it.price * it.quantity)
    return {
        "items": n,
        "total_quantity": total_quantity,
        "total_value": round(total_value, 2),
        "mean_price": round(sum(prices) / n, 4) if n else 0.0,
        "median_price": round(median, 2),
        "out_of_stock": out_of_stock,
        "by_category": {
            name: {
                "items": int(c["items"]),
                "quantity": int(c["quantity"]),
                "value": round(c["value"], 2),
            }
            for name, c in sorted(by_category.items())
        },
        "by_warehouse": dict(sorted(by_warehouse.items())),
        "top_by_value": [
            {"id": it.id, "sku": it.sku, "value": round(it.price * it.quantity, 2)}
            for it in top_items
        ],
    }
