"""The tool-use demo dataset: a Northwind Labs knowledge base and short conversations that call the real tools.

    .venv/bin/python -m onestop.agents.dataset   # rewrites src/onestop/agents/demo/ (the same bytes every time)

Every tool message holds what the real tool returns for the call's arguments (the calculator, unit converter
and BM25 search are run here; `current_datetime` is rendered by `format_datetime` at a fixed moment per record,
so the files do not change with the clock). Arguments are canonical, each derivable from its question, so a
fine-tuned model's calls can be scored by exact match: the held-out split uses question templates and values
the training split never shows.
"""

import functools
import json
import random
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from onestop.agents.builtin import calculator, convert_units, current_datetime, format_datetime, search_documents
from onestop.agents.tools import tool_from_function
from onestop.core.files import write_text_atomic

DEMO_DIR = Path(__file__).parent / "demo"
SEED = 0
SPLITS = ("train", "heldout")
# Records per split and kind: about 20% need no tool, the rest are spread over the four tools.
COUNTS = {
    "train": {"calculator": 56, "search_documents": 56, "convert_units": 44, "current_datetime": 36},
    "heldout": {"calculator": 16, "search_documents": 16, "convert_units": 12, "current_datetime": 12},
}
HELDOUT_SHARE = 5  # one number in five is kept for the held-out split
CAPABILITIES = (
    "I can do arithmetic with a calculator, tell the current date and time in a city, convert units, "
    "and search the Northwind Labs documents."
)

# --- the knowledge base -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One paragraph of the knowledge base and the one-sentence answer that states it."""

    topic: str
    """The search query: a lower-case phrase whose words all appear in `text` and rarely elsewhere."""
    text: str
    answer: str
    """The answer without its citation, which comes from the search result (`file:line`)."""
    key: str
    """A short string an agent's final answer must contain (`agent_tasks.jsonl`)."""


@dataclass(frozen=True)
class Document:
    name: str
    title: str
    intro: str
    facts: tuple[Fact, ...]

    def markdown(self) -> str:
        paragraphs = [f"# {self.title}", self.intro, *(fact.text for fact in self.facts)]
        return "\n\n".join(paragraphs) + "\n"

    def line_of(self, fact: Fact) -> int:
        """1-based line of a fact: title, blank, intro, blank, then one fact every second line."""
        return 5 + 2 * self.facts.index(fact)


KB = (
    Document(
        "handbook.md",
        "Employee Handbook",
        "This handbook covers leave, working time and reviews for all staff.",
        (
            Fact(
                "vacation days",
                "Vacation days: every full-time employee gets 25 paid vacation days per calendar year.",
                "Employees get 25 vacation days a year",
                "25",
            ),
            Fact(
                "remote work",
                "Remote work: staff may work from home up to 3 days per week with their manager's approval.",
                "You may work remotely up to 3 days a week with your manager's approval",
                "3",
            ),
            Fact(
                "working hours",
                "Working hours: core hours run from 10:00 to 16:00, and a full-time week is 38 hours.",
                "Core hours are 10:00 to 16:00 and a full-time week is 38 hours",
                "38",
            ),
            Fact(
                "sick leave",
                "Sick leave: employees receive 10 paid sick days a year; a doctor's note is needed after 3 "
                "consecutive days.",
                "You get 10 paid sick days a year, with a doctor's note after 3 consecutive days",
                "10",
            ),
            Fact(
                "parental leave",
                "Parental leave: new parents receive 16 weeks of fully paid parental leave.",
                "New parents get 16 weeks of fully paid parental leave",
                "16",
            ),
            Fact(
                "public holidays",
                "Public holidays: the company observes 11 public holidays per year, published on the intranet "
                "each January.",
                "The company observes 11 public holidays a year",
                "11",
            ),
            Fact(
                "performance reviews",
                "Performance reviews: managers hold reviews twice a year, in April and October.",
                "Performance reviews happen twice a year, in April and October",
                "April",
            ),
        ),
    ),
    Document(
        "expenses.md",
        "Expenses and Travel",
        "How to spend company money on trips and get it back.",
        (
            Fact(
                "meal limits",
                "Meal limits: meals on business trips are covered up to 60 dollars per day.",
                "Meals on business trips are covered up to 60 dollars a day",
                "60",
            ),
            Fact(
                "travel booking",
                "Travel booking: book all flights and trains through the TripDesk portal at least 14 days before "
                "departure.",
                "Book flights and trains through TripDesk at least 14 days before departure",
                "14",
            ),
            Fact(
                "reimbursement deadline",
                "Reimbursement deadline: submit expense claims within 30 days of the purchase date.",
                "Expense claims must be submitted within 30 days of purchase",
                "30",
            ),
            Fact(
                "hotel rates",
                "Hotel rates: hotel stays are covered up to 180 dollars per night.",
                "Hotel stays are covered up to 180 dollars a night",
                "180",
            ),
            Fact(
                "mileage rate",
                "Mileage rate: driving your own car for work is paid at 0.58 dollars per mile.",
                "Driving your own car for work is paid at 0.58 dollars per mile",
                "0.58",
            ),
            Fact(
                "corporate card",
                "Corporate card: staff who go on trips more than 4 times a year may request a corporate card with "
                "a monthly cap of 5000 dollars.",
                "Frequent travelers can request a corporate card with a monthly cap of 5000 dollars",
                "5000",
            ),
            Fact(
                "receipts",
                "Receipts: keep the receipt for any purchase above 25 dollars; photos and scans are accepted.",
                "Keep receipts for any purchase above 25 dollars",
                "25",
            ),
        ),
    ),
    Document(
        "it.md",
        "IT Guide",
        "Accounts, devices and getting help with computers.",
        (
            Fact(
                "password rotation",
                "Password rotation: passwords must be changed every 90 days and be at least 14 characters long.",
                "Passwords must be changed every 90 days and be at least 14 characters long",
                "90",
            ),
            Fact(
                "vpn setup",
                "VPN setup: install the NorthVPN client and sign in with your work email; VPN sessions expire "
                "after 12 hours.",
                "Install the NorthVPN client; VPN sessions expire after 12 hours",
                "12",
            ),
            Fact(
                "laptop replacement",
                "Laptop replacement: laptops are replaced every 4 years, or sooner if a repair would cost more "
                "than 600 dollars.",
                "Laptops are replaced every 4 years, or sooner if a repair would cost over 600 dollars",
                "4",
            ),
            Fact(
                "help desk",
                "Help desk: call the help desk at extension 4357 from 8:00 to 18:00 on weekdays.",
                "Call the help desk at extension 4357, 8:00 to 18:00 on weekdays",
                "4357",
            ),
            Fact(
                "software requests",
                "Software requests: ask for new software through the ServiceHub form; approval takes about 2 "
                "business days.",
                "Request software through ServiceHub; approval takes about 2 business days",
                "ServiceHub",
            ),
            Fact(
                "backups",
                "Backups: laptops back up automatically every night at 02:00, and copies are kept for 30 days.",
                "Laptops back up every night at 02:00 and copies are kept for 30 days",
                "02:00",
            ),
            Fact(
                "printing quota",
                "Printing quota: each person may print 100 color pages a month; black-and-white printing is unlimited.",
                "You may print 100 color pages a month; black-and-white is unlimited",
                "100",
            ),
        ),
    ),
    Document(
        "security.md",
        "Security Rules",
        "Everyone follows these rules to keep people and data safe.",
        (
            Fact(
                "two-factor authentication",
                "Two-factor authentication: every account must use the Authenticator app as its second factor; "
                "SMS codes are not allowed.",
                "Every account must use the Authenticator app for two-factor authentication; SMS codes are not allowed",
                "Authenticator",
            ),
            Fact(
                "badge access",
                "Badge access: wear your badge at all times and report a lost badge within 24 hours.",
                "Wear your badge at all times and report a lost badge within 24 hours",
                "24",
            ),
            Fact(
                "phishing reports",
                "Phishing reports: forward suspicious emails to phish@northwindlabs.example and never click "
                "unknown links.",
                "Forward suspicious emails to phish@northwindlabs.example",
                "phish@northwindlabs.example",
            ),
            Fact(
                "data classification",
                "Data classification: every document is labeled Public, Internal, Confidential or Restricted.",
                "Documents are labeled Public, Internal, Confidential or Restricted",
                "Confidential",
            ),
            Fact(
                "screen lock",
                "Screen lock: computers lock automatically after 5 minutes without input.",
                "Computers lock automatically after 5 minutes without input",
                "5",
            ),
            Fact(
                "visitor policy",
                "Visitor policy: guests sign in at the front desk and must be escorted by a host at all times.",
                "Visitors sign in at the front desk and must be escorted by a host at all times",
                "escorted",
            ),
            Fact(
                "security training",
                "Security training: everyone completes the yearly security course by 31 March.",
                "Everyone must complete the yearly security course by 31 March",
                "31 March",
            ),
        ),
    ),
    Document(
        "onboarding.md",
        "Onboarding Guide",
        "What new hires can expect in their opening weeks.",
        (
            Fact(
                "first day",
                "First day: new hires arrive at 09:30 and meet their buddy in the lobby on floor 2.",
                "New hires arrive at 09:30 on their first day and meet their buddy in the lobby",
                "09:30",
            ),
            Fact(
                "buddy program",
                "Buddy program: every new hire is paired with a buddy for their initial 8 weeks.",
                "Every new hire is paired with a buddy for their initial 8 weeks",
                "8",
            ),
            Fact(
                "orientation session",
                "Orientation session: a 2-hour company orientation runs every Monday at 10:00.",
                "A 2-hour orientation session runs every Monday at 10:00",
                "Monday",
            ),
            Fact(
                "payroll setup",
                "Payroll setup: enter your bank details in the HR portal within 5 days so your pay arrives on "
                "the 25th.",
                "Enter your bank details in the HR portal within 5 days; pay arrives on the 25th",
                "25th",
            ),
            Fact(
                "equipment pickup",
                "Equipment pickup: collect your laptop, badge and headset from the IT room on level 3.",
                "Collect your laptop, badge and headset from the IT room on level 3",
                "level 3",
            ),
            Fact(
                "onboarding goals",
                "Onboarding goals: agree on 3 goals with your manager by the end of month one.",
                "Agree on 3 onboarding goals with your manager by the end of month one",
                "3",
            ),
            Fact(
                "org chart",
                "Org chart: the current org chart is on the intranet under People and is updated every quarter.",
                "The org chart is on the intranet under People and is updated every quarter",
                "People",
            ),
        ),
    ),
    Document(
        "office.md",
        "Offices",
        "Where the company works and how to get around the buildings.",
        (
            Fact(
                "office addresses",
                "Office addresses: headquarters is at 42 Harbor Street, Seattle, and the second office is at "
                "7 Canal Road, Austin.",
                "Headquarters is at 42 Harbor Street, Seattle, and the second office at 7 Canal Road, Austin",
                "42 Harbor Street",
            ),
            Fact(
                "parking",
                "Parking: the garage under headquarters has 120 spaces, and a permit costs 45 dollars a month.",
                "The garage has 120 parking spaces and a permit costs 45 dollars a month",
                "120",
            ),
            Fact(
                "guest wi-fi",
                "Guest Wi-Fi: visitors join the NW-Guest network; its password changes every Monday.",
                "Visitors join the NW-Guest network, whose password changes every Monday",
                "NW-Guest",
            ),
            Fact(
                "meeting rooms",
                "Meeting rooms: book rooms in the shared calendar; a reservation may last at most 2 hours.",
                "Book meeting rooms in the shared calendar for at most 2 hours",
                "2 hours",
            ),
            Fact(
                "kitchen",
                "Kitchen: free coffee, tea and fruit are restocked every morning at 08:00.",
                "Free coffee, tea and fruit are restocked in the kitchen every morning at 08:00",
                "08:00",
            ),
            Fact(
                "bike storage",
                "Bike storage: the bike room on level -1 holds 40 bicycles and has 2 repair stands.",
                "The bike room on level -1 holds 40 bicycles",
                "40",
            ),
            Fact(
                "building hours",
                "Building hours: the building is open from 07:00 to 21:00 on weekdays and closed on weekends.",
                "The building is open from 07:00 to 21:00 on weekdays and closed on weekends",
                "21:00",
            ),
        ),
    ),
    Document(
        "benefits.md",
        "Benefits",
        "What the company offers its staff beyond salary.",
        (
            Fact(
                "health insurance",
                "Health insurance: Northwind Labs pays 90% of the premium for employees and their families.",
                "Northwind Labs pays 90% of the health insurance premium for employees and their families",
                "90%",
            ),
            Fact(
                "retirement plan",
                "Retirement plan: the company matches pension contributions up to 5% of salary.",
                "The company matches retirement contributions up to 5% of salary",
                "5%",
            ),
            Fact(
                "gym allowance",
                "Gym allowance: every employee gets 50 dollars a month toward a gym or sports club.",
                "Every employee gets a gym allowance of 50 dollars a month",
                "50",
            ),
            Fact(
                "learning budget",
                "Learning budget: each employee may spend 1500 dollars a year on courses, books and conferences.",
                "Each employee has a learning budget of 1500 dollars a year",
                "1500",
            ),
            Fact(
                "commuter benefit",
                "Commuter benefit: monthly public transit passes are reimbursed up to 100 dollars.",
                "Monthly transit passes are reimbursed up to 100 dollars",
                "100",
            ),
            Fact(
                "employee discount",
                "Employee discount: staff get 30% off all Northwind Labs products.",
                "Staff get 30% off all Northwind Labs products",
                "30%",
            ),
            Fact(
                "wellness days",
                "Wellness days: everyone gets 2 extra wellness days each year to rest and recharge.",
                "Everyone gets 2 extra wellness days each year",
                "2",
            ),
        ),
    ),
)

# --- question templates: train and held-out never share one ------------------------------------------------

# (question, expression, answer); {a} {b} {c} are operands, {p} a percentage of {n}, {q} a quotient.
CALCULATOR_TEMPLATES = {
    "train": (
        ("What is {a} times {b}?", "{a} * {b}", "{a} * {b} = {result}."),
        ("{a} x {b}?", "{a} * {b}", "{a} * {b} = {result}."),
        ("Calculate {a} plus {b}.", "{a} + {b}", "{a} + {b} = {result}."),
        ("What's {a} minus {b}?", "{a} - {b}", "{a} - {b} = {result}."),
        ("Please divide {a} by {b}.", "{a} / {b}", "{a} / {b} = {result}."),
        ("What's {p}% of {n}?", "{n} * {p} / 100", "{p}% of {n} is {result}."),
        (
            "Could you add {a} and {b}, then multiply the sum by {c}?",
            "({a} + {b}) * {c}",
            "({a} + {b}) * {c} = {result}.",
        ),
        ("How much is {a} multiplied by {b}, please?", "{a} * {b}", "{a} * {b} = {result}."),
        ("Compute {a} + {b} + {c}.", "{a} + {b} + {c}", "{a} + {b} + {c} = {result}."),
        ("I bought {a} tickets at {b} dollars each. What's the total?", "{a} * {b}", "The total is {result} dollars."),
        ("Split a {a} dollar bill evenly among {b} people.", "{a} / {b}", "Each person pays {result} dollars."),
        ("What is {a} divided by {b}?", "{a} / {b}", "{a} / {b} = {result}."),
        ("Subtract {b} from {a}.", "{a} - {b}", "{a} - {b} = {result}."),
        ("Quick math: {a} minus {b}, times {c}?", "({a} - {b}) * {c}", "({a} - {b}) * {c} = {result}."),
        ("What is the sum of {a} and {b}?", "{a} + {b}", "{a} + {b} = {result}."),
    ),
    "heldout": (
        ("Multiply {a} by {b} for me.", "{a} * {b}", "{a} * {b} = {result}."),
        ("I need the total of {a} and {b}.", "{a} + {b}", "{a} + {b} = {result}."),
        ("Take {b} away from {a}, please.", "{a} - {b}", "{a} - {b} = {result}."),
        ("What do I get if I divide {a} by {b}?", "{a} / {b}", "{a} / {b} = {result}."),
        ("Work out {p} percent of {n}.", "{n} * {p} / 100", "{p}% of {n} is {result}."),
        ("Add {a} to {b} and divide the result by {c}.", "({a} + {b}) / {c}", "({a} + {b}) / {c} = {result}."),
    ),
}
PERCENTS = (5, 10, 12, 15, 20, 25, 30, 40, 60, 75)

# (question, which unit pairs fit its wording); {v} is the value, {src} {dst} the unit words, {src_abbr} {dst_abbr}
# the canonical units.
UNIT_TEMPLATES = {
    "train": (
        ("Convert {v} {src} to {dst}.", "any"),
        ("How many {dst} is {v} {src}?", "counted"),
        ("{v} {src_abbr} to {dst_abbr}?", "any"),
        ("What is {v} {src} in {dst}?", "any"),
        ("Could you convert {v} {src} into {dst}, please?", "any"),
        ("I ran {v} {src} today. How far is that in {dst}?", "running"),
        ("My suitcase weighs {v} {src}. What is that in {dst}?", "mass"),
        ("It's {v} degrees {src} outside. What's that in {dst}?", "temperature"),
        ("Please express {v} {src_abbr} in {dst_abbr}.", "any"),
        ("{v} {src} to {dst}", "any"),
        ("How much is {v} {src} in {dst}?", "any"),
        ("I need {v} {src} converted to {dst}.", "any"),
        ("Quick one: {v} {src} equals how many {dst}?", "counted"),
    ),
    "heldout": (
        ("Turn {v} {src} into {dst}.", "any"),
        ("What's the {dst} equivalent of {v} {src}?", "any"),
        ("A board is {v} {src} long. How long is it in {dst}?", "board"),
        ("Translate {v} {src_abbr} to {dst_abbr}, please.", "any"),
        ("How many {dst} are in {v} {src}?", "counted"),
        ("The recipe says {v} {src}. How much is that in {dst}?", "mass"),
    ),
}
UNIT_NAMES = {
    "km": "kilometers",
    "mi": "miles",
    "m": "meters",
    "ft": "feet",
    "cm": "centimeters",
    "in": "inches",
    "kg": "kilograms",
    "lb": "pounds",
    "g": "grams",
    "oz": "ounces",
    "C": "Celsius",
    "F": "Fahrenheit",
}
UNIT_PAIRS = {
    "length": (("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("cm", "in"), ("in", "cm")),
    "mass": (("kg", "lb"), ("lb", "kg"), ("g", "oz"), ("oz", "g")),
    "temperature": (("C", "F"), ("F", "C")),
}
# Which pairs a template's wording fits: "counted" reads "how many", which a temperature is not; a board is
# not miles long.
UNIT_FITS = {
    "any": [pair for pairs in UNIT_PAIRS.values() for pair in pairs],
    "counted": [*UNIT_PAIRS["length"], *UNIT_PAIRS["mass"]],
    "running": [("km", "mi"), ("mi", "km")],
    "board": [("m", "ft"), ("ft", "m"), ("cm", "in"), ("in", "cm")],
    "mass": list(UNIT_PAIRS["mass"]),
    "temperature": list(UNIT_PAIRS["temperature"]),
}

# (question, kind): kind "time" or "date" names a city, "utc_time" and "utc_date" none.
DATETIME_TEMPLATES = {
    "train": (
        ("What time is it in {city}?", "time"),
        ("time in {city}?", "time"),
        ("Could you tell me the current time in {city}, please?", "time"),
        ("What's the date in {city} right now?", "date"),
        ("What day is it in {city}?", "date"),
        ("I have a call with a colleague in {city}. What time is it there?", "time"),
        ("Current time in {city}.", "time"),
        ("Is it morning in {city}? What's the time there?", "time"),
        ("What time is it?", "utc_time"),
        ("What is today's date?", "utc_date"),
        ("What's the time in UTC?", "utc_time"),
        ("Tell me the local time in {city}.", "time"),
        ("Do you know what time it is in {city} now?", "time"),
    ),
    "heldout": (
        ("My friend lives in {city}. What's the time for her now?", "time"),
        ("Check the clock in {city} for me.", "time"),
        ("What's today's date over in {city}?", "date"),
        ("Give me the current UTC time.", "utc_time"),
        ("How late is it in {city} at the moment?", "time"),
    ),
}
CITIES = {
    "Tokyo": "Asia/Tokyo",
    "London": "Europe/London",
    "New York": "America/New_York",
    "Paris": "Europe/Paris",
    "Berlin": "Europe/Berlin",
    "Sydney": "Australia/Sydney",
    "Los Angeles": "America/Los_Angeles",
    "Singapore": "Asia/Singapore",
    "Mumbai": "Asia/Kolkata",
    "Toronto": "America/Toronto",
    "Dubai": "Asia/Dubai",
}

SEARCH_TEMPLATES = {
    "train": (
        "What is the policy on {topic}?",
        "Search the docs for {topic}.",
        "Can you look up {topic} for me?",
        "{topic}?",
        "Tell me about {topic} at Northwind.",
        "Please check the knowledge base for {topic}.",
        "What do our documents say about {topic}?",
        "I need info on {topic}, please.",
        "Find {topic} in the company docs.",
        "What are the rules for {topic}?",
        "Quick question about {topic}: what's the rule?",
        "Hi! What does Northwind Labs say about {topic}?",
        "Look in the handbook and docs for {topic}.",
        "What should I know about {topic}?",
    ),
    "heldout": (
        "Could you find what Northwind says about {topic}?",
        "Any guidance on {topic}?",
        "Look up {topic}.",
        "Hey, what's the deal with {topic}?",
        "I'm new here. Where do we stand on {topic}?",
    ),
}

# --- prompts that need no tool -----------------------------------------------------------------------------

NO_TOOL = {
    "train": (
        ("Hi!", "Hello! How can I help you today?"),
        ("Hello", "Hi there! What can I do for you?"),
        ("Good morning!", "Good morning! How can I help?"),
        ("Hey there.", "Hey! What do you need help with?"),
        ("Hi, how are you?", "I'm doing well, thanks! How can I help you?"),
        ("Good evening.", "Good evening! What can I do for you?"),
        ("Hello, is anyone there?", "Yes, I'm here. How can I help?"),
        ("Good afternoon, assistant.", "Good afternoon! How can I help you today?"),
        ("Thanks!", "You're welcome!"),
        ("Thank you so much.", "Happy to help!"),
        ("Great, thanks for the help.", "You're welcome. Let me know if you need anything else."),
        ("Perfect, that's all I needed.", "Glad I could help!"),
        ("Thanks, bye!", "Goodbye, have a great day!"),
        ("Awesome, thank you.", "You're welcome!"),
        ("What can you do?", CAPABILITIES),
        ("What tools do you have?", CAPABILITIES),
        ("How can you help me?", CAPABILITIES),
        ("Who are you?", CAPABILITIES),
        ("What are your tools?", CAPABILITIES),
        ("What kind of questions can you answer?", CAPABILITIES),
        ("What does CPU stand for?", "CPU stands for central processing unit."),
        ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar."),
        ("Define the word 'algorithm'.", "An algorithm is a step-by-step procedure for solving a problem."),
        ("What is a kilometer?", "A kilometer is a unit of length equal to 1000 meters."),
        ("What does HTTP mean?", "HTTP stands for Hypertext Transfer Protocol."),
        ("What is a time zone?", "A time zone is a region that uses the same standard time."),
        ("What is an API?", "An API is an interface that lets programs talk to each other."),
        ("What's a prime number?", "A prime number is a whole number above 1 divisible only by 1 and itself."),
        ("How many continents are there?", "There are seven continents."),
        ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
        ("How many legs does a spider have?", "A spider has eight legs."),
        ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
        ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
        ("How many days are in a week?", "There are seven days in a week."),
        ("Which ocean is the largest?", "The Pacific Ocean is the largest."),
        ("What language is spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    ),
    "heldout": (
        ("Howdy!", "Howdy! How can I help you today?"),
        ("Hello, nice to meet you.", "Nice to meet you too! How can I help?"),
        ("Cheers, appreciate it.", "Anytime!"),
        ("Many thanks for your help today.", "You're welcome, have a good day!"),
        ("What are you able to help with?", CAPABILITIES),
        ("Tell me what you're capable of.", CAPABILITIES),
        ("What does RAM stand for?", "RAM stands for random-access memory."),
        ("What is a percentage?", "A percentage is a fraction of 100."),
        ("What is gravity?", "Gravity is the force that pulls masses toward each other."),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
        ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    ),
}
CAPITAL_TEMPLATES = {
    "train": ("What is the capital of {country}?", "Capital of {country}?", "Which city is the capital of {country}?"),
    "heldout": ("Do you know the capital city of {country}?",),
}
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Peru": "Lima",
    "Germany": "Berlin",
    "India": "New Delhi",
    "Argentina": "Buenos Aires",
    "Portugal": "Lisbon",
    "Greece": "Athens",
}
CAPITAL_RECORDS = {"train": 12, "heldout": 3}

# --- end-to-end tasks for an agent loop: (task, tool, the arguments that solve it or, for a search, the topic of
# the fact whose `key` the answer must contain) ----------------------------------------------------------------

AGENT_TASKS = (
    ("What is 47 times 38?", "calculator", {"expression": "47 * 38"}),
    ("A team of 14 people each gets 125 dollars. What is the total budget?", "calculator", {"expression": "14 * 125"}),
    ("What's 18% of 650?", "calculator", {"expression": "650 * 18 / 100"}),
    ("Add 389 and 476.", "calculator", {"expression": "389 + 476"}),
    ("How many vacation days do Northwind Labs employees get per year?", "search_documents", "vacation days"),
    ("How often must passwords be changed at Northwind Labs?", "search_documents", "password rotation"),
    ("What is the daily meal limit on business trips at Northwind Labs?", "search_documents", "meal limits"),
    ("How many parking spaces does the Northwind Labs garage have?", "search_documents", "parking"),
    ("How many miles is 42 kilometers?", "convert_units", {"value": 42, "from_unit": "km", "to_unit": "mi"}),
    ("What is 30 degrees Celsius in Fahrenheit?", "convert_units", {"value": 30, "from_unit": "C", "to_unit": "F"}),
    ("How many pounds is 68 kilograms?", "convert_units", {"value": 68, "from_unit": "kg", "to_unit": "lb"}),
    ("Convert 250 centimeters to inches.", "convert_units", {"value": 250, "from_unit": "cm", "to_unit": "in"}),
)


# --- building records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One prompt and what the assistant does: a call (name, arguments) with its real result, or a direct reply."""

    question: str
    answer: str
    call: tuple[str, dict] | None = None
    result: str | None = None


def write_dataset(out_dir: Path) -> dict[str, Counter]:
    """Write the knowledge base, both splits, the evaluation suite, the agent tasks and the README.

    Args:
        out_dir: The folder to fill (the package's `demo/` for the committed copy); files are replaced whole.

    Returns:
        Records per kind (a tool name, or "none") for each split.

    Raises:
        AssertionError: A search does not find the paragraph its question is about first, or a held-out
            question or call repeats a training one: the knowledge base or the templates need changing.
        ValueError: The templates and values cannot make as many distinct questions as `COUNTS` asks.
    """
    rng = random.Random(SEED)
    kb_dir = out_dir / "kb"
    for stale in sorted(kb_dir.glob("*.md")):
        if stale.name not in {document.name for document in KB}:
            stale.unlink()
    for document in KB:
        write_text_atomic(kb_dir / document.name, document.markdown())
    search = functools.partial(search_documents, folder=str(kb_dir))
    tools = [tool_from_function(tool).openai_schema() for tool in (calculator, current_datetime, search, convert_units)]

    pools = value_pools(rng)
    facts = [fact for document in KB for fact in document.facts]
    rng.shuffle(facts)
    held_facts = COUNTS["heldout"]["search_documents"]
    fact_split = {"heldout": facts[:held_facts], "train": facts[held_facts:]}
    examples = {}
    for split in SPLITS:
        counts = COUNTS[split]
        examples[split] = [
            *calculator_examples(split, counts["calculator"], pools, rng),
            *search_examples(split, fact_split[split], counts["search_documents"], search),
            *unit_examples(split, counts["convert_units"], pools, rng),
            *datetime_examples(split, counts["current_datetime"], rng),
            *no_tool_examples(split, rng),
        ]
        rng.shuffle(examples[split])
    check_splits(examples)

    write_jsonl(out_dir / "tools_train.jsonl", [conversation(example, tools) for example in examples["train"]])
    write_jsonl(out_dir / "tools_heldout.jsonl", [conversation(example, tools) for example in examples["heldout"]])
    write_jsonl(out_dir / "tools_eval.jsonl", [eval_prompt(example, tools) for example in examples["heldout"]])
    write_jsonl(out_dir / "agent_tasks.jsonl", agent_tasks(search))
    counts = {
        split: Counter(example.call[0] if example.call else "none" for example in examples[split]) for split in SPLITS
    }
    write_text_atomic(out_dir / "README.md", readme(counts, fact_split["heldout"]))
    return counts


def value_pools(rng: random.Random) -> dict[str, dict[str, list]]:
    """Numbers for each split, disjoint where a value carries the question, so held-out values are new."""

    def partition(values) -> dict[str, list]:
        shuffled = list(values)
        rng.shuffle(shuffled)
        cut = len(shuffled) // HELDOUT_SHARE
        return {"heldout": sorted(shuffled[:cut]), "train": sorted(shuffled[cut:])}

    shared_divisors = list(range(2, 13))  # too few to split; the dividend around them is new
    return {
        "two_digit": partition(range(11, 100)),
        "three_digit": partition(range(100, 1000)),
        "percent_of": partition(range(40, 1000, 20)),
        "divisor": {"train": shared_divisors, "heldout": shared_divisors},
        "amount": partition([*range(2, 121), *(x + 0.5 for x in range(1, 31))]),
        "C": partition(range(-20, 46)),
        "F": partition(range(0, 111)),
    }


def distinct_examples(count: int, templates: tuple, make: Callable[[tuple], Example]) -> list[Example]:
    """`count` examples with distinct questions, the templates taking turns.

    A template whose question came up already passes its turn on (one without a slot, such as "What time is
    it?", can be asked only once).
    """
    examples, seen = [], set()
    for attempt in range(100 * count):
        if len(examples) == count:
            break
        example = make(templates[attempt % len(templates)])
        if example.question not in seen:
            seen.add(example.question)
            examples.append(example)
    if len(examples) < count:
        raise ValueError(f"only {len(examples)} distinct questions of {count}: add templates or values")
    return examples


def calculator_examples(split: str, count: int, pools: dict, rng: random.Random) -> list[Example]:
    """Arithmetic questions; the operands a template needs are drawn from the split's own numbers."""

    def make(template: tuple[str, str, str]) -> Example:
        question, expression, answer = template
        values = calculator_values(expression, split, pools, rng)
        arguments = {"expression": expression.format(**values)}
        result = calculator(**arguments)
        return Example(
            question.format(**values), answer.format(**values, result=result), ("calculator", arguments), result
        )

    return distinct_examples(count, CALCULATOR_TEMPLATES[split], make)


def calculator_values(expression: str, split: str, pools: dict, rng: random.Random) -> dict[str, int]:
    def draw(pool: str) -> int:
        return rng.choice(pools[pool][split])

    if "{p}" in expression:
        return {"p": rng.choice(PERCENTS), "n": draw("percent_of")}
    if expression == "{a} / {b}":  # a whole quotient: a dividend built from a divisor
        b = draw("divisor")
        return {"a": b * draw("two_digit"), "b": b}
    if "{c}" in expression:
        a, b = sorted((draw("two_digit"), draw("two_digit")), reverse=True)  # a - b stays positive
        return {"a": a, "b": b, "c": draw("divisor") if "/ {c}" in expression else draw("two_digit")}
    if "*" in expression:
        return {"a": draw("two_digit"), "b": draw("two_digit")}
    a, b = sorted((draw("three_digit"), draw("three_digit")), reverse=True)
    return {"a": a, "b": b}


def search_examples(split: str, facts: list[Fact], count: int, search: Callable[..., str]) -> list[Example]:
    """Questions about one fact each; the query is the fact's topic and the answer cites the best passage."""
    templates = SEARCH_TEMPLATES[split]
    examples = []
    for i in range(count):
        # (fact, template) pairs stay distinct while count < lcm(len(facts), len(templates))
        fact, template = facts[i % len(facts)], templates[i % len(templates)]
        arguments = {"query": fact.topic}
        result = search(**arguments)
        best = result.split("\n\n")[0]
        citation, text = best.split(": ", 1)
        document = next(document for document in KB if fact in document.facts)
        assert citation == f"{document.name}:{document.line_of(fact)}" and text == fact.text, (
            f"searching {fact.topic!r} finds {best!r} first, not {document.name}:{document.line_of(fact)}"
        )
        answer = f"{fact.answer} ({citation})."
        examples.append(Example(template.format(topic=fact.topic), answer, ("search_documents", arguments), result))
    return examples


def unit_examples(split: str, count: int, pools: dict, rng: random.Random) -> list[Example]:
    """Conversion questions; the pair fits the template's wording, the value comes from the split's numbers."""

    def make(template: tuple[str, str]) -> Example:
        question, fits = template
        src, dst = rng.choice(UNIT_FITS[fits])
        value = rng.choice(pools[src if src in ("C", "F") else "amount"][split])
        words = {"v": value, "src": UNIT_NAMES[src], "dst": UNIT_NAMES[dst], "src_abbr": src, "dst_abbr": dst}
        arguments = {"value": value, "from_unit": src, "to_unit": dst}
        result = convert_units(**arguments)
        given, converted = result.split(" = ")
        return Example(question.format(**words), f"{given} is {converted}.", ("convert_units", arguments), result)

    return distinct_examples(count, UNIT_TEMPLATES[split], make)


def datetime_examples(split: str, count: int, rng: random.Random) -> list[Example]:
    """Time and date questions, each answered from its own fixed moment in 2025."""

    def make(template: tuple[str, str]) -> Example:
        question, kind = template
        city = rng.choice(sorted(CITIES)) if "{city}" in question else None
        timezone = CITIES[city] if city else "UTC"
        moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(365 * 24 * 60))
        local = moment.astimezone(ZoneInfo(timezone))
        day, date = f"{local:%A}", f"{local:%A}, {local.day} {local:%B %Y}"
        answer = {
            "time": f"It is {local:%H:%M} on {day} in {city}.",
            "date": f"It is {date} in {city}.",
            "utc_time": f"It is {local:%H:%M} UTC on {day}.",
            "utc_date": f"Today is {date} (UTC).",
        }[kind]
        arguments = {"timezone": timezone}
        result = format_datetime(moment, timezone)
        return Example(question.format(city=city), answer, ("current_datetime", arguments), result)

    return distinct_examples(count, DATETIME_TEMPLATES[split], make)


def no_tool_examples(split: str, rng: random.Random) -> list[Example]:
    """Greetings, thanks, what the assistant can do, and general knowledge it answers without a tool."""
    examples = [Example(question, answer) for question, answer in NO_TOOL[split]]
    countries = sorted(CAPITALS)
    rng.shuffle(countries)
    held = CAPITAL_RECORDS["heldout"]
    countries = countries[:held] if split == "heldout" else countries[held : held + CAPITAL_RECORDS["train"]]
    templates = CAPITAL_TEMPLATES[split]
    for i, country in enumerate(countries):
        question = templates[i % len(templates)].format(country=country)
        examples.append(Example(question, f"The capital of {country} is {CAPITALS[country]}."))
    return examples


def check_splits(examples: dict[str, list[Example]]) -> None:
    """Held-out questions and calls (other than a city's time zone, which must be known) are new."""
    train_questions = {example.question for example in examples["train"]}
    train_calls = {json.dumps(example.call, sort_keys=True) for example in examples["train"] if example.call}
    for example in examples["heldout"]:
        assert example.question not in train_questions, f"held-out question in training: {example.question!r}"
        if example.call and example.call[0] != "current_datetime":
            assert json.dumps(example.call, sort_keys=True) not in train_calls, f"held-out call in training: {example}"


def conversation(example: Example, tools: list[dict]) -> dict:
    """A record in the OpenAI `messages` shape: the question, the call and its result if any, the answer."""
    messages = [{"role": "user", "content": example.question}]
    if example.call:
        name, arguments = example.call
        call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": example.result})
    messages.append({"role": "assistant", "content": example.answer})
    return {"messages": messages, "tools": tools}


def eval_prompt(example: Example, tools: list[dict]) -> dict:
    """The question alone, with the call a model should make first (None: answer without a tool)."""
    expected = {"name": example.call[0], "arguments": example.call[1]} if example.call else None
    return {"messages": [{"role": "user", "content": example.question}], "tools": tools, "expected": expected}


def agent_tasks(search: Callable[..., str]) -> list[dict]:
    """One-call tasks whose answer string is read from the real tool result (or the fact searched for)."""
    facts = {fact.topic: fact for document in KB for fact in document.facts}
    tasks = []
    for task, name, arguments in AGENT_TASKS:
        if name == "calculator":
            answer = calculator(**arguments)
        elif name == "convert_units":
            answer = convert_units(**arguments).split(" = ")[1].split(" ")[0]
        else:
            fact = facts[arguments]
            # an agent words its own query; the task's own words must find the fact as well as its topic does
            assert fact.text in search(query=task).split("\n\n")[0], f"{task!r} does not find {fact.topic!r} first"
            answer = fact.key
        tasks.append({"task": task, "answer": answer, "tools": [name]})
    return tasks


def readme(counts: dict[str, Counter], held_facts: list[Fact]) -> str:
    """The folder's README: what each file is, the counts per tool and split, what is held out."""
    kinds = ("calculator", "search_documents", "convert_units", "current_datetime", "none")
    rows = [f"| {kind} | {counts['train'][kind]} | {counts['heldout'][kind]} |" for kind in kinds]
    rows.append(f"| total | {sum(counts['train'].values())} | {sum(counts['heldout'].values())} |")
    held_out = textwrap.fill(
        "Held out: every question template, the operands and unit values (drawn from numbers training never "
        "uses), the countries asked about, and these knowledge-base facts: "
        f"{', '.join(sorted(fact.topic for fact in held_facts))}. Cities repeat, since a model must know their "
        "time zones.",
        width=110,
    )
    rows_text = "\n".join(rows)
    return f"""# Tool-use demo data

Generated by `python -m onestop.agents.dataset` (seed {SEED}; edit `src/onestop/agents/dataset.py`, never these
files): a rerun rewrites them byte for byte, and `tests/test_tool_dataset.py` checks that they match it.

- `kb/`: the Northwind Labs knowledge base, {len(KB)} Markdown files, one fact a paragraph, for `search_documents`.
- `tools_train.jsonl`, `tools_heldout.jsonl`: conversations in the OpenAI `messages` shape, each with the same
  `tools` list (calculator, current_datetime, search_documents, convert_units). A tool message holds what the
  real tool returns; a time is rendered at a fixed moment per record.
- `tools_eval.jsonl`: the held-out questions alone, with the `expected` first call (`null`: answer without a tool).
- `agent_tasks.jsonl`: {len(AGENT_TASKS)} one-call tasks for an agent loop, with a string the final answer must contain.

| records | train | held-out |
|---|---|---|
{rows_text}

{held_out}
"""


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def main() -> None:
    counts = write_dataset(DEMO_DIR)
    for split in SPLITS:
        shown = ", ".join(f"{kind} {n}" for kind, n in sorted(counts[split].items()))
        print(f"{split}: {sum(counts[split].values())} records ({shown})")
    print(f"wrote {DEMO_DIR}")


if __name__ == "__main__":
    main()
