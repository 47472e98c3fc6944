"""The demo feeder's soil model: its numbers, shared by the feeder and `irrigation demo --help`
(a module of its own so the command line can read them without loading the service)."""

START_PCT = 50.0
DRY_PER_READING = 1.0
# Enough for the demo rule (30 -> above 45) to re-arm after one watering.
WET_PER_RUN = 25.0

FEEDER_HELP = (
    "Feed the demo sensor: a soil-moisture reading every --interval seconds, starting at "
    f"{START_PCT:g} %, drying by {DRY_PER_READING:g} point a reading and wetted by "
    f"{WET_PER_RUN:g} points for each run of the zone's pumps that the simulator's truth "
    "shows. One line per reading."
)
