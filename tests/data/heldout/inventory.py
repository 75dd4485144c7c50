"""A small warehouse inventory: products, stock levels, reservations and reorder suggestions."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path


class InventoryError(Exception):
    """Raised when an operation would leave the inventory in an invalid state."""


class UnknownProduct(InventoryError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"unknown product: {sku}")
        self.sku = sku


class OutOfStock(InventoryError):
    def __init__(self, sku: str, wanted: int, available: int) -> None:
        super().__init__(f"{sku}: wanted {wanted}, only {available} available")
        self.sku = sku
        self.wanted = wanted
        self.available = available


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: Decimal
    reorder_level: int = 10
    reorder_quantity: int = 50

    def total_price(self, quantity: int) -> Decimal:
        return self.price * quantity


@dataclass
class StockItem:
    product: Product
    on_hand: int = 0
    reserved: int = 0
    history: list[tuple[date, int]] = field(default_factory=list)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def needs_reorder(self) -> bool:
        return self.available <= self.product.reorder_level


class Inventory:
    def __init__(self) -> None:
        self._items: dict[str, StockItem] = {}
        self._reservations: dict[str, dict[str, int]] = defaultdict(dict)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sku: str) -> bool:
        return sku in self._items

    def add_product(self, product: Product, quantity: int = 0) -> None:
        if product.sku in self._items:
            raise InventoryError(f"product {product.sku} already exists")
        self._items[product.sku] = StockItem(product, on_hand=quantity)

    def item(self, sku: str) -> StockItem:
        try:
            return self._items[sku]
        except KeyError:
            raise UnknownProduct(sku) from None

    def receive(self, sku: str, quantity: int, when: date | None = None) -> None:
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        item = self.item(sku)
        item.on_hand += quantity
        item.history.append((when or date.today(), quantity))

    def reserve(self, order_id: str, sku: str, quantity: int) -> None:
        item = self.item(sku)
        if quantity > item.available:
            raise OutOfStock(sku, quantity, item.available)
        item.reserved += quantity
        self._reservations[order_id][sku] = self._reservations[order_id].get(sku, 0) + quantity

    def cancel(self, order_id: str) -> None:
        for sku, quantity in self._reservations.pop(order_id, {}).items():
            self._items[sku].reserved -= quantity

    def ship(self, order_id: str, when: date | None = None) -> Decimal:
        """Remove the reserved stock of an order and return the order's value."""
        reservation = self._reservations.pop(order_id, None)
        if reservation is None:
            raise InventoryError(f"no reservation for order {order_id}")
        total = Decimal("0")
        for sku, quantity in reservation.items():
            item = self._items[sku]
            item.reserved -= quantity
            item.on_hand -= quantity
            item.history.append((when or date.today(), -quantity))
            total += item.product.total_price(quantity)
        return total

    def reorder_suggestions(self) -> list[tuple[str, int]]:
        suggestions = []
        for sku, item in sorted(self._items.items()):
            if item.needs_reorder():
                suggestions.append((sku, item.product.reorder_quantity))
        return suggestions

    def value(self) -> Decimal:
        return sum((item.product.total_price(item.on_hand) for item in self._items.values()), Decimal("0"))

    def shipped_since(self, start: date) -> dict[str, int]:
        shipped: dict[str, int] = {}
        for sku, item in self._items.items():
            count = sum(-q for d, q in item.history if q < 0 and d >= start)
            if count:
                shipped[sku] = count
        return shipped

    def weekly_report(self, today: date) -> str:
        week_ago = today - timedelta(days=7)
        lines = [f"Inventory report for {today.isoformat()}", ""]
        shipped = self.shipped_since(week_ago)
        for sku, item in sorted(self._items.items()):
            lines.append(
                f"{sku:<10} {item.product.name:<30} on hand {item.on_hand:>5}  "
                f"reserved {item.reserved:>4}  shipped {shipped.get(sku, 0):>4}"
            )
        lines.append("")
        lines.append(f"Total value: {self.value():.2f}")
        return "\n".join(lines)

    def to_json(self) -> str:
        data = {
            sku: {
                "name": item.product.name,
                "price": str(item.product.price),
                "on_hand": item.on_hand,
                "reserved": item.reserved,
            }
            for sku, item in self._items.items()
        }
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Inventory:
        inventory = cls()
        for sku, entry in json.loads(text).items():
            product = Product(sku, entry["name"], Decimal(entry["price"]))
            inventory.add_product(product, entry["on_hand"])
            inventory._items[sku].reserved = entry.get("reserved", 0)
        return inventory


def load_inventory(path: Path) -> Inventory:
    if not path.exists():
        return Inventory()
    return Inventory.from_json(path.read_text(encoding="utf-8"))


def save_inventory(inventory: Inventory, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(inventory.to_json(), encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    inv = Inventory()
    inv.add_product(Product("A-100", "Blue widget", Decimal("2.50")), 40)
    inv.add_product(Product("B-200", "Red gadget", Decimal("12.00"), reorder_level=5), 8)
    inv.reserve("order-1", "A-100", 12)
    inv.reserve("order-1", "B-200", 4)
    print(inv.ship("order-1"))
    print(inv.reorder_suggestions())
    print(inv.weekly_report(date.today()))
