from decimal import Decimal

from django.db import migrations
from django.utils import timezone

# List prices per million tokens (USD): input, output, cached input. Admin-editable afterwards;
# a price change is a new row with a later valid_from, so past costs stay as charged.
PRICES = [
    ("openai", "gpt-5", "1.25", "10.00", "0.125"),
    ("openai", "gpt-5-mini*", "0.25", "2.00", "0.025"),
    ("openai", "gpt-5-nano*", "0.05", "0.40", "0.005"),
    ("openai", "gpt-4.1", "2.00", "8.00", "0.50"),
    ("openai", "gpt-4.1-mini*", "0.40", "1.60", "0.10"),
    ("openai", "gpt-4.1-nano*", "0.10", "0.40", "0.025"),
    ("openai", "gpt-4o", "2.50", "10.00", "1.25"),
    ("openai", "gpt-4o-2024-*", "2.50", "10.00", "1.25"),
    ("openai", "gpt-4o-mini*", "0.15", "0.60", "0.075"),
    ("openai", "o3", "2.00", "8.00", "0.50"),
    ("openai", "o4-mini*", "1.10", "4.40", "0.275"),
    ("anthropic", "claude-opus-4-5*", "5.00", "25.00", "0.50"),
    ("anthropic", "claude-opus-4*", "15.00", "75.00", "1.50"),
    ("anthropic", "claude-sonnet-4*", "3.00", "15.00", "0.30"),
    ("anthropic", "claude-3-7-sonnet*", "3.00", "15.00", "0.30"),
    ("anthropic", "claude-haiku-4-5*", "1.00", "5.00", "0.10"),
    ("anthropic", "claude-3-5-haiku*", "0.80", "4.00", "0.08"),
    # The simulated provider is free, except the demo's priced model (budget demos).
    ("simulated", "*", "0", "0", "0"),
    ("simulated", "sim-priced*", "1000.00", "2000.00", "500.00"),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("agents", "ModelPrice")
    now = timezone.now()
    for provider, pattern, inp, out, cached in PRICES:
        ModelPrice.objects.get_or_create(
            provider=provider,
            model_pattern=pattern,
            defaults={
                "input_per_million": Decimal(inp),
                "output_per_million": Decimal(out),
                "cached_input_per_million": Decimal(cached),
                "valid_from": now,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("agents", "0002_model_price")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
