/* The handout's print button (a separate file: the page's CSP allows no inline script). */
document.getElementById("print-button").addEventListener("click", function () { window.print(); });
