// Starts Swagger UI on /openapi.json. A file of its own, not an inline script: the page's
// Content-Security-Policy allows scripts from this origin only. No validator badge (it would call out).
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    showExtensions: true,
    showCommonExtensions: true,
  });
});
