// Render the math that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \], with the
// vendored KaTeX; document$ is Material's page-load stream (it also fires on instant navigation).
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
});
