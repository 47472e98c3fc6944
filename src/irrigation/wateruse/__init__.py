"""Water use: litres per pump, zone, water source and site, per local day and month."""
