"""Forms of the two trigger pages."""

from django import forms
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _, pgettext_lazy

from tasks.conf import mq_settings
from tasks.channel.publish import CHANNEL_MAX_LENGTH, check_channel

MAX_COUNT = 100


class ProdconsForm(forms.Form):
    number = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=10**9,
        label=_("Number"),
        help_text=_("Which dish to cook; leave empty for a random one."),
    )
    count = forms.IntegerField(
        min_value=1,
        max_value=MAX_COUNT,
        initial=1,
        label=_("Count"),
        help_text=format_lazy(_("How many tasks to enqueue (1 to {max})."), max=MAX_COUNT),
    )


class PubsubForm(forms.Form):
    message = forms.CharField(label=_("Message"), max_length=10_000, widget=forms.Textarea(attrs={"rows": 3}))
    channel = forms.CharField(
        required=False,
        max_length=CHANNEL_MAX_LENGTH,
        label=pgettext_lazy("pub/sub", "Channel"),
        help_text=_("Leave empty for the default channel."),
    )

    def __init__(self, *args, choose_channel=True, **kwargs):
        super().__init__(*args, **kwargs)
        if not choose_channel:
            # Without the field a posted channel is ignored: the message
            # goes to the default channel, whose handlers expect it.
            del self.fields["channel"]
            return
        # Read per form, not at import, so a changed setting is seen.
        self.fields["channel"].widget.attrs["placeholder"] = mq_settings.MQ_DEFAULT_CHANNEL

    def clean_channel(self):
        # The publisher decides what a valid channel is; empty means the default.
        try:
            return check_channel(self.cleaned_data["channel"] or None)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
