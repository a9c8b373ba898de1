"""The regularization prompts of dti's CoRe: scenes and styles in which a subject's context should read as
it does around its class word. Written for this project (CoRe's authors ship their own lists, of about a
hundred prompts each for animate and inanimate subjects; these are fewer and fit both kinds). Each has one
`{}` with spaces around it, where the placeholder or the class word goes (dti.methods.context_regularization
checks that the words around it tokenize alike)."""

REGULARIZATION_PROMPTS: tuple[str, ...] = (
    "a {} in the desert",
    "a {} on a sandy beach at sunset",
    "a {} in a snowy forest",
    "a {} on a busy city street at night",
    "a {} floating in outer space",
    "a {} on the surface of the moon",
    "a {} in a field of sunflowers",
    "a {} under water among coral",
    "a {} on top of a mountain",
    "a {} in a library full of books",
    "a {} in a kitchen next to a bowl of fruit",
    "a {} on a wooden table in a cafe",
    "a {} in the rain with an umbrella nearby",
    "a {} at a train station",
    "a {} in front of the Eiffel Tower",
    "a {} in a garden with red roses",
    "a {} on a rowboat on a misty lake",
    "a {} in a cardboard box",
    "a {} next to a campfire",
    "a {} in a museum display case",
    "a watercolor painting of a {}",
    "an oil painting of a {} in the style of Van Gogh",
    "a pencil sketch of a {}",
    "a cubist painting of a {}",
    "a pixel art picture of a {}",
    "a {} made of lego bricks",
    "a {} carved out of wood",
    "a {} in a comic book panel",
    "a {} wearing a santa hat",
    "a {} with a rainbow in the background",
)
