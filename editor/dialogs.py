"""The Join and Host dialogs (checked input only; they start nothing themselves)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from editor.urls import InvalidSessionUrl, SessionUrl, parse_session_url

__all__ = ["HostDialog", "JoinDialog"]


class JoinDialog(QDialog):
    """Ask for a session URL; refuse a malformed one in place, with the reason.

    After ``exec()`` returns ``Accepted``, :attr:`session_url` holds the checked URL.
    """

    def __init__(self, recent: list[str] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Join a session")
        self.session_url: SessionUrl | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Paste the invite link you were given:", self))
        self.url_edit = QComboBox(self)
        self.url_edit.setEditable(True)
        self.url_edit.addItems(recent or [])
        self.url_edit.setCurrentText("")
        line = self.url_edit.lineEdit()
        assert line is not None  # an editable combo box always has one
        line.setPlaceholderText("ws://192.168.1.20:8080/notes")
        layout.addWidget(self.url_edit)
        self.error_label = QLabel("", self)
        self.error_label.setObjectName("joinError")
        self.error_label.setStyleSheet("color: #d64545;")
        self.error_label.setWordWrap(True)
        self.error_label.setMinimumWidth(380)
        layout.addWidget(self.error_label)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Join")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.buttons = buttons
        line.textEdited.connect(lambda _text: self.error_label.setText(""))

    def accept(self) -> None:
        """Close only when the URL is well formed; otherwise show why not."""
        try:
            self.session_url = parse_session_url(self.url_edit.currentText())
        except InvalidSessionUrl as error:
            self.session_url = None
            self.error_label.setText(str(error))
            self.error_label.setToolTip(str(error))
            self.adjustSize()  # the whole reason shows, wrapped, never cut off
            return
        super().accept()


class HostDialog(QDialog):
    """Choose the port to host on (0: any free port)."""

    def __init__(self, port: int = 0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Host a session")
        form = QFormLayout(self)
        self.port_spin = QSpinBox(self)
        self.port_spin.setRange(0, 65535)
        self.port_spin.setSpecialValueText("any free port")
        self.port_spin.setValue(port)
        form.addRow("Port:", self.port_spin)
        self.keep_checkbox = QCheckBox("Share the document that is open now", self)
        self.keep_checkbox.setChecked(True)
        form.addRow(self.keep_checkbox)
        form.addRow(
            QLabel(
                "Others on your network join with the invite link shown once the\n"
                "server runs. The server stops when you stop hosting or quit.",
                self,
            )
        )
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Host")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    @property
    def port(self) -> int:
        """The chosen port (0: let the system choose)."""
        return int(self.port_spin.value())
