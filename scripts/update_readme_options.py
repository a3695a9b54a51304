"""Rewrite the README's option table from the config fields' help texts (run after adding or
changing an option; tests/test_config_rule.py fails while the table is stale).

    python scripts/update_readme_options.py
"""

import re
from pathlib import Path

from tvcore.config import options_table

README = Path(__file__).resolve().parents[1] / "README.md"

text = README.read_text(encoding="utf-8")
new = re.sub(r"(<!-- options:start -->\n).*?(\n<!-- options:end -->)",
             lambda m: m.group(1) + options_table() + m.group(2), text, flags=re.S)
README.write_text(new, encoding="utf-8")
print("README option table", "updated" if new != text else "already up to date")
